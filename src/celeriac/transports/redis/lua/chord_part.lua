-- Record a chord header task's outcome and, if it completes the chord, claim the chord for
-- this caller, in one atomic step. Celery 5.7's keys and arguments (its part-return script
-- takes the same), so Celery 5.7 and 5.6 workers can join the same chord:
--
-- KEYS[1] .j  sorted set: member [1, task_id, state, value] in kombu's JSON, scored by index
-- KEYS[2] .t  integer: parts added to the chord after its size was set (Task.add_to_chord)
-- KEYS[3] .s  the header's size, set by the producer before it publishes the last part
-- KEYS[4] .d  set of "<task id>:<score>": the parts recorded (Celery 5.6 keeps none)
-- KEYS[5]     the group's record (celery-taskset-meta-<id>), kept as long as the join
-- KEYS[6] .c  the claim: a caller's token, then "done" once the body is published
-- ARGV[1] the task id, ARGV[2] the member, ARGV[3] 1 (a sorted set: the only layout here),
-- ARGV[4] the score (the group index, or +inf), ARGV[5] seconds to keep the join and
-- ARGV[6] the group's record (0: no expiry; a fraction is kept in milliseconds),
-- ARGV[7] seconds the claim holds, ARGV[8] the caller's claim token.
--
-- Returns {parts counted, claimed (1 or 0)}, or {-1, 0} when the chord is over already
-- (a late copy of a part: it must neither count nor bring the join back).
local joined, added, size_key, seen_key, group_key, claim_key =
    KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5], KEYS[6]
local task_id, member, score = ARGV[1], ARGV[2], ARGV[4]

if redis.call('GET', claim_key) == 'done' then
    return {-1, 0}
end

-- A redelivered task counts once, whatever it returned the second time.
local seen = task_id .. ':' .. score
if redis.call('SISMEMBER', seen_key, seen) == 0 then
    redis.call('ZADD', joined, score, member)
    redis.call('SADD', seen_key, seen)
end
-- Counted in .j, so parts recorded by Celery 5.6 (ZADD alone) count too.
local count = redis.call('ZCOUNT', joined, '-inf', '+inf')

-- Celery's EXPIRE for whole seconds; PEXPIRE keeps a fraction of one.
local function keep(key, seconds)
    if seconds == math.floor(seconds) then
        redis.call('EXPIRE', key, seconds)
    else
        redis.call('PEXPIRE', key, math.max(1, math.floor(seconds * 1000 + 0.5)))
    end
end
local join_seconds, group_seconds = tonumber(ARGV[5]), tonumber(ARGV[6])
if join_seconds > 0 then
    for _, key in ipairs({joined, added, size_key, seen_key}) do
        keep(key, join_seconds)
    end
    if group_seconds > 0 then
        keep(group_key, group_seconds)
    end
end

local diff = redis.call('GET', added)
local size = redis.call('GET', size_key)
local claimed = 0
if size and count == tonumber(size) + tonumber(diff or 0) then
    if redis.call('SET', claim_key, ARGV[8], 'NX', 'EX', ARGV[7]) then
        claimed = 1
    end
end
return {count, claimed}
