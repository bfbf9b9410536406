-- Let a lease go, atomically, only if this holder has it: another holder's is never ended.
-- KEYS[1]: the lease's key. ARGV[1]: the holder. Returns 1 when it was released, else 0.
if redis.call('GET', KEYS[1]) == ARGV[1] then
    return redis.call('DEL', KEYS[1])
end
return 0
