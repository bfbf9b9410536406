-- Take or renew a lease, atomically: one holder at a time, for a ttl.
-- KEYS[1]: the lease's key. ARGV[1]: the holder. ARGV[2]: the ttl in milliseconds.
-- Returns 1 when ARGV[1] holds the lease now (taken while free or expired, or renewed: its
-- ttl starts again), 0 while another holder's lease runs. Expiry is Redis's own (PX).
if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then
    return 1
end
if redis.call('GET', KEYS[1]) == ARGV[1] then
    redis.call('PEXPIRE', KEYS[1], ARGV[2])
    return 1
end
return 0
