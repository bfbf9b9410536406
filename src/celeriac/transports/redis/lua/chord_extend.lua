-- Hold a chord's claim for the time its body takes to publish, once its parts are read.
-- KEYS[1] .c (the claim), KEYS[2] .s (the size). ARGV[1] the caller's token, ARGV[2] seconds.
-- Returns 1 when the caller holds the claim for ARGV[2] seconds from now: it held it still,
-- or the claim had lapsed while the chord is still there and nobody took it meanwhile;
-- 0 when another caller holds it or the chord is over (the caller must not publish).
local claim_key, size_key, token = KEYS[1], KEYS[2], ARGV[1]
local holder = redis.call('GET', claim_key)
if holder == token then
    redis.call('EXPIRE', claim_key, ARGV[2])
    return 1
end
if not holder and redis.call('EXISTS', size_key) == 1 then
    redis.call('SET', claim_key, token, 'EX', ARGV[2])
    return 1
end
return 0
