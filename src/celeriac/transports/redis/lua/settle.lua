-- Settle one held message atomically, only if it is still held (and, for a sweep, still due):
-- remove it from `unacked` and `unacked_index`, then push ARGV[2] (if not empty) onto KEYS[3].
-- A message already settled or restored by someone else is left alone, so settling twice, or
-- two sweepers racing, can never duplicate or lose a message.
--
-- KEYS[1] unacked hash, KEYS[2] unacked_index zset, KEYS[3] destination list, KEYS[4] the
-- queue's deferred set (a deferred message that is settled leaves it).
-- ARGV[1] tag, ARGV[2] value to push ('' for none), ARGV[3] highest unacked_index score at
-- which to act ('+inf': always), ARGV[4] 'RPUSH' (to be consumed next) or 'LPUSH'.
-- Returns 1 when settled, 0 when the message was not held (or not due).
--
-- A sweep (a finite ARGV[3]) read the entry in earlier round trips; since then another sweep
-- may have restored it and a worker claimed it again under the same tag (the tag travels in
-- the message). So the sweep acts only on what is due now: an entry with no index score is
-- not (a fresh claim has one; an ack removes the score first, then the entry), and a stale
-- index entry, whose message is gone, is dropped here rather than by the caller. With
-- ARGV[2] '' a sweep only drops a stale index entry: it found no message to restore.
local unacked, index = KEYS[1], KEYS[2]
local tag = ARGV[1]
if ARGV[3] ~= '+inf' then
    local score = redis.call('ZSCORE', index, tag)
    if not score or tonumber(score) > tonumber(ARGV[3]) then
        return 0
    end
    if redis.call('HEXISTS', unacked, tag) == 0 then
        redis.call('ZREM', index, tag)
        return 0
    end
    if ARGV[2] == '' then
        return 0  -- held again, and due again, since the sweep read it: the next sweep's
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
