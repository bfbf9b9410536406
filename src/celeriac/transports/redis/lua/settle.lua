-- Settle one held message atomically, only if it is still held (and, for a sweep, still stale):
-- remove it from `unacked` and `unacked_index`, then push ARGV[2] (if not empty) onto KEYS[3].
-- A message already settled or restored by someone else is left alone, so settling twice, or
-- two sweepers racing, can never duplicate or lose a message.
--
-- KEYS[1] unacked hash, KEYS[2] unacked_index zset, KEYS[3] destination list, KEYS[4] the
-- queue's deferred set (a deferred message that is settled leaves it).
-- ARGV[1] tag, ARGV[2] value to push ('' for none), ARGV[3] highest unacked_index score at
-- which to act ('+inf': always), ARGV[4] 'RPUSH' (to be consumed next) or 'LPUSH'.
-- Returns 1 when settled, 0 when the message was not held (or not stale).
local unacked, index = KEYS[1], KEYS[2]
local tag = ARGV[1]
if ARGV[3] ~= '+inf' then
    local score = redis.call('ZSCORE', index, tag)
    if score and tonumber(score) > tonumber(ARGV[3]) then
        return 0
    end
end
redis.call('ZREM', index, tag)
redis.call('SREM', KEYS[4], tag)
if redis.call('HDEL', unacked, tag) == 0 then
    return 0
end
if ARGV[2] ~= '' then
    redis.call(ARGV[4], KEYS[3], ARGV[2])
end
return 1
