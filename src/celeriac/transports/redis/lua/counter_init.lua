-- Set a counter if it is missing, atomically, and return the value in force afterwards: callers
-- starting together all get the first one's. An existing counter is untouched, expiry and all.
-- KEYS[1]: the counter (an integer string, as INCRBY keeps). ARGV[1]: its value if missing.
-- ARGV[2]: milliseconds to keep it, or '' to keep it until deleted.
local current = redis.call('GET', KEYS[1])
if current then
    if tonumber(current) == nil then
        return redis.error_reply('ERR value is not an integer or out of range')
    end
    return current
end
if ARGV[2] == '' then
    redis.call('SET', KEYS[1], ARGV[1])
else
    redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
end
return ARGV[1]
