-- A chord's body is published: drop the join, if the caller still holds the claim, and mark
-- the chord over so that a late copy of a part neither counts nor completes it again.
-- KEYS: .c, .j, .t, .s, .d. ARGV[1] the caller's claim token, ARGV[2] seconds "done" stays.
-- Returns 1 if dropped, 0 if another caller holds the claim now (it drops the join itself).
if redis.call('GET', KEYS[1]) ~= ARGV[1] then
    return 0
end
redis.call('DEL', KEYS[2], KEYS[3], KEYS[4], KEYS[5])
redis.call('SET', KEYS[1], 'done', 'EX', ARGV[2])
return 1
