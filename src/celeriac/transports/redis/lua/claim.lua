-- Claim up to ARGV[2] messages atomically, most urgent list first, holding each one the way
-- kombu does: HSET unacked <tag> [envelope, "", routing_key] + ZADD unacked_index <now> <tag>.
--
-- KEYS[1] unacked hash, KEYS[2] unacked_index zset, KEYS[3] dead-letter list,
-- KEYS[4..] the queue lists in consume order.
-- ARGV[1] now (unix seconds), ARGV[2] how many to claim at most (may be 0),
-- ARGV[3] the tag of a message the caller already popped (BRPOP) and must hold too, or '',
-- ARGV[4] that message's `unacked` value,
-- ARGV[5..] for each list in KEYS[4..], its queue name JSON-quoted (the routing key).
--
-- Returns {buried, tag1, envelope1, list1, tag2, ...}: `buried` counts elements that were not
-- JSON envelopes; they go to the dead-letter list here, so nothing is lost and nothing
-- unreadable is ever held in `unacked` (where a Celery worker's restore would choke on it).
-- cjson is lenient where Python is not (bytes that are not UTF-8 pass, in a tag too): what it
-- takes, Python reads afterwards and dead-letters if it must. A record keeps the element's
-- bytes as they are inside its JSON string (see the module docstring of brokers/redis.py).
local unacked, index, dead = KEYS[1], KEYS[2], KEYS[3]
local now, want = ARGV[1], tonumber(ARGV[2])
local out = {0}
local fields, scores = {}, {}
local taken = {}  -- tags this call holds messages under
if ARGV[3] ~= '' then
    fields[1], fields[2] = ARGV[3], ARGV[4]
    scores[1], scores[2] = now, ARGV[3]
    taken[ARGV[3]] = true
end
-- The tag to hold a message under: its own delivery tag, unless it has none or another held
-- message has it already (a peer that reuses tags, a message pushed twice), in which case
-- one made up for it: two messages under one tag would share one `unacked` record, and
-- settling one would drop the other's.
local function hold_tag(tag, payload, k)
    if type(tag) == 'string' and tag ~= '' and not taken[tag]
        and redis.call('HEXISTS', unacked, tag) == 0 then
        return tag
    end
    local made = 'celeriac-untagged-' .. redis.sha1hex(payload) .. '-' .. now .. '-' .. k
    tag = made
    local extra = 0
    while taken[tag] or redis.call('HEXISTS', unacked, tag) == 1 do
        extra = extra + 1
        tag = made .. '-' .. extra
    end
    return tag
end
for i = 4, #KEYS do
    if want <= 0 then break end
    local got = redis.call('RPOP', KEYS[i], want)
    if got then
        want = want - #got
        local routing_key = ARGV[i + 1]
        for n, payload in ipairs(got) do
            local ok, message = pcall(cjson.decode, payload)
            if ok and type(message) == 'table' and type(message.properties) == 'table' then
                local tag = hold_tag(message.properties.delivery_tag, payload, #out)
                taken[tag] = true
                fields[#fields + 1] = tag
                fields[#fields + 1] = '[' .. payload .. ', "", ' .. routing_key .. ']'
                scores[#scores + 1] = now
                scores[#scores + 1] = tag
                out[#out + 1] = tag
                out[#out + 1] = payload
                out[#out + 1] = i - 3
            else
                redis.call('LPUSH', dead, cjson.encode({
                    queue = cjson.decode(routing_key),
                    reason = 'malformed message: not a JSON envelope',
                    died_at = tonumber(now),
                    envelope = payload,
                }))
                out[1] = out[1] + 1
            end
        end
    end
end
-- A prefetch window can be thousands (-c 1000 holds 4,000): unpack() passes at most about
-- 8,000 values, so the pairs go in slices of a thousand.
local function in_slices(command, key, pairs)
    for first = 1, #pairs, 2000 do
        redis.call(command, key, unpack(pairs, first, math.min(first + 1999, #pairs)))
    end
end
in_slices('HSET', unacked, fields)
in_slices('ZADD', index, scores)
return out
