-- Park a held message until its ETA without holding it: keep it in `unacked` and score it
-- `eta - visibility_timeout` in `unacked_index`, so every restorer (celeriac's sweep, or a
-- Celery worker with the same visibility timeout) puts it back on its list at the ETA, once.
-- Its tag joins the queue's deferred set, so purge and queue sizes can tell it from held ones.
--
-- KEYS[1] unacked hash, KEYS[2] unacked_index zset, KEYS[3] the queue's deferred set.
-- ARGV[1] tag, ARGV[2] score. Returns 1, or 0 when the message was no longer held.
if redis.call('HEXISTS', KEYS[1], ARGV[1]) == 0 then
    return 0
end
redis.call('ZADD', KEYS[2], ARGV[2], ARGV[1])
redis.call('SADD', KEYS[3], ARGV[1])
return 1
