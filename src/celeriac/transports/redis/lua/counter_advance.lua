-- Raise a counter to ARGV[1] if it is below, atomically, and return the value it had before
-- (0 when missing: Redis drops an expired key itself). How a scheduler claims a run: of any
-- number of callers advancing to the same value, one alone gets a smaller value back.
-- KEYS[1]: the counter (an integer string, as INCRBY keeps). ARGV[1]: the value to raise it
-- to. ARGV[2]: milliseconds to keep a counter this call raises, or '' for its expiry as it
-- was (KEEPTTL; a new counter is then kept until deleted). A counter not raised is untouched.
local current = redis.call('GET', KEYS[1])
local before = 0
if current then
    before = tonumber(current)
    if before == nil then
        return redis.error_reply('ERR value is not an integer or out of range')
    end
end
if before < tonumber(ARGV[1]) then
    if ARGV[2] == '' then
        redis.call('SET', KEYS[1], ARGV[1], 'KEEPTTL')
    else
        redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
    end
end
return current or 0
