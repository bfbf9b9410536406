-- Publish a message unless one was published under the same key with a sequence number at
-- least this one: the check, the key's new sequence and the push in one atomic step, so a
-- publish repeated after a crash that left it in doubt (the scheduler's runs) queues the
-- message once.
--
-- KEYS[1] the once-key, KEYS[2] the queue's list. ARGV[1] the sequence (an integer),
-- ARGV[2] the message. Returns 1 when it published, 0 when it did not.
local current = redis.call('GET', KEYS[1])
if current and tonumber(current) >= tonumber(ARGV[1]) then
    return 0
end
redis.call('SET', KEYS[1], ARGV[1])
redis.call('LPUSH', KEYS[2], ARGV[2])
return 1
