-- One start under a sliding-window rate limit, atomically, by Redis's clock (TIME): callers'
-- clocks never matter. Times are whole microseconds. Scripts are replicated by their effects
-- (Redis 7's only mode, 5 and 6's default), so reading TIME before writing is allowed, and
-- nothing here is random: a start's member, unique even for equal times, comes from the caller.
--
-- KEYS[1]: the starts, a sorted set scored by time. KEYS[2]: the next retry time to hand out.
-- ARGV[1]: limit, starts allowed in (now - period, now]. ARGV[2]: period (microseconds).
-- ARGV[3]: burst, starts allowed in (now - period * burst / limit, now] (burst < limit only).
-- ARGV[4]: the member of this start. ARGV[5]: the longest refusal told its own wait
-- (microseconds; celeriac.transports.backend.SHORT_WAIT).
--
-- Returns 0 for an allowed start (recorded), else the microseconds to wait (nothing recorded):
-- not before the start that binds leaves its window, nor before the next retry time, which
-- then moves period / limit later, so that callers refused together come back one by one.
-- A wait no longer than ARGV[5] (nor than period / limit) is returned as it is and the next
-- retry time stays: a caller some milliseconds early keeps its turn, not the end of the line.
-- Both keys expire once the limit is idle: the starts a period after the newest, the next
-- retry time once it passed (and a period after its last use at least).
local starts, next_key = KEYS[1], KEYS[2]
local limit, period, burst = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local short = math.min(tonumber(ARGV[5]), period / limit)
local clock = redis.call('TIME')
local now = tonumber(clock[1]) * 1000000 + tonumber(clock[2])

redis.call('ZREMRANGEBYSCORE', starts, '-inf', now - period)
local wait = 0
local count = redis.call('ZCARD', starts)
if count >= limit then
    local binding = redis.call('ZRANGE', starts, count - limit, count - limit, 'WITHSCORES')
    wait = tonumber(binding[2]) + period - now
end
if burst < limit then
    local window = period * burst / limit
    local first = math.floor(now - window) + 1 -- scores are whole: > now - window
    local recent = redis.call('ZCOUNT', starts, first, '+inf')
    if recent >= burst then
        local binding = redis.call(
            'ZRANGEBYSCORE', starts, first, '+inf', 'WITHSCORES', 'LIMIT', recent - burst, 1)
        wait = math.max(wait, tonumber(binding[2]) + window - now)
    end
end

local idle = math.ceil(period / 1000) + 1 -- milliseconds a key stays after its last use
if wait <= 0 then
    redis.call('ZADD', starts, now, ARGV[4])
    redis.call('PEXPIRE', starts, idle)
    return 0
end
if wait <= short then
    return math.ceil(wait)
end
local retry = math.max(tonumber(redis.call('GET', next_key) or 0), now + wait)
local next_retry = retry + period / limit
redis.call('SET', next_key, next_retry, 'PX', math.max(idle, math.ceil((next_retry - now) / 1000)))
return math.ceil(retry - now)
