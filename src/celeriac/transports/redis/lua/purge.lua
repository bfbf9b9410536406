-- Delete every waiting message of one queue: its four lists and its deferred messages.
-- Held messages stay. KEYS[1] unacked hash, KEYS[2] unacked_index zset, KEYS[3] the queue's
-- deferred set, KEYS[4..] the queue's lists. Returns how many messages were deleted.
local deleted = 0
for i = 4, #KEYS do
    deleted = deleted + redis.call('LLEN', KEYS[i])
end
redis.call('DEL', unpack(KEYS, 4))
for _, tag in ipairs(redis.call('SMEMBERS', KEYS[3])) do
    deleted = deleted + redis.call('HDEL', KEYS[1], tag)
    redis.call('ZREM', KEYS[2], tag)
end
redis.call('DEL', KEYS[3])
return deleted
