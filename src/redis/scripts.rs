//! The Lua scripts that make settling, lease refreshes and claims atomic and *fenced*.
//!
//! Every script that writes on behalf of an entry first asks Redis who holds it
//! (`XPENDING stream group id id 1`) and writes only if the answer is this consumer. A worker
//! that lost an entry — its link froze, Redis was paused, its lease lapsed and another
//! consumer claimed the entry — therefore writes nothing for it: no second result, no ack of
//! someone else's delivery, no error record. The check and the writes run as one script, so
//! nothing can come between them. (A `MULTI` cannot branch on what `XPENDING` answered, and
//! `WATCH` on the stream key fails on every unrelated `XADD`; a script is the one atomic
//! check-then-write Redis offers.)
//!
//! Scripts are sent with `EVALSHA`, and reloaded by the `redis` crate after a restart
//! empties the script cache (`NOSCRIPT`).

use redis::{Connection, RedisResult, Script, Value};

/// Helpers shared by the scripts.
const COMMON: &str = r"
local function xadd(key, maxlen, fields)
  local args = {'XADD', key}
  if maxlen > 0 then
    args[#args + 1] = 'MAXLEN'; args[#args + 1] = '~'; args[#args + 1] = maxlen
  end
  args[#args + 1] = '*'
  for _, v in ipairs(fields) do args[#args + 1] = v end
  return redis.call(unpack(args))
end
local function owner(stream, group, id)
  local p = redis.call('XPENDING', stream, group, id, id, 1)
  if #p == 0 then return nil end
  return p[1][2], p[1][4]
end
local function finish(stream, group, errors, id, del)
  redis.call('XACK', stream, group, id)
  redis.call('HDEL', errors, id)
  if del then redis.call('XDEL', stream, id) end
end
local function bury(stream, dead, dmax, id, reason, deliveries, me)
  local fields = {'entry', id, 'error', reason, 'deliveries', deliveries, 'consumer', me}
  local found = redis.call('XRANGE', stream, id, id)
  if #found > 0 then
    for _, v in ipairs(found[1][2]) do fields[#fields + 1] = v end
  end
  xadd(dead, dmax, fields)
end
";

/// Settles finished entries this consumer still holds. Per entry: 1 settled, 0 not pending
/// (acknowledged already, or deleted), -1 held by another consumer.
const SETTLE: &str = r"
local stream, errors, results, dead = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local group, me = ARGV[1], ARGV[2]
local rmax, dmax = tonumber(ARGV[3]), tonumber(ARGV[4])
local del, has_results = ARGV[5] == '1', ARGV[6] == '1'
local out = {}
for i = 7, #ARGV, 4 do
  local id, kind, data, n = ARGV[i], ARGV[i + 1], ARGV[i + 2], ARGV[i + 3]
  local who = owner(stream, group, id)
  if who == nil then
    out[#out + 1] = 0
  elseif who ~= me then
    out[#out + 1] = -1
  else
    if kind == 'ok' then
      if has_results then
        xadd(results, rmax, {'entry', id, 'output', data, 'consumer', me})
      end
      finish(stream, group, errors, id, del)
    elseif kind == 'retry' then
      redis.call('HSET', errors, id, data)
    else
      bury(stream, dead, dmax, id, data, n, me)
      finish(stream, group, errors, id, del)
    end
    out[#out + 1] = 1
  end
end
return out
";

/// Re-claims entries this consumer holds, setting their idle time (0: a lease refresh; very
/// large: handing them back for immediate claiming) and optionally their delivery count.
/// `JUSTID` leaves the count alone. Per entry: 1 done, 0 no longer held.
const LEASE: &str = r"
local stream = KEYS[1]
local group, me, idle = ARGV[1], ARGV[2], ARGV[3]
local out = {}
for i = 4, #ARGV, 2 do
  local id, count = ARGV[i], ARGV[i + 1]
  if owner(stream, group, id) == me then
    if count == '' then
      redis.call('XCLAIM', stream, group, me, 0, id, 'IDLE', idle, 'JUSTID')
    else
      redis.call('XCLAIM', stream, group, me, 0, id, 'IDLE', idle, 'RETRYCOUNT', count, 'JUSTID')
    end
    out[#out + 1] = 1
  else
    out[#out + 1] = 0
  end
end
return out
";

/// Claims entries idle past `claim_after` (XAUTOCLAIM), reads each one's exact delivery
/// count, dead-letters those delivered more than `max_deliveries` times, forgets the error
/// records of deleted entries, and gives back untouched any id this consumer already holds.
/// Returns `{cursor, {{id, fields, deliveries}...}, buried, deleted}`.
const CLAIM: &str = r"
local stream, errors, dead = KEYS[1], KEYS[2], KEYS[3]
local group, me, min_idle, cursor, count = ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5]
local maxd, dmax, del = tonumber(ARGV[6]), tonumber(ARGV[7]), ARGV[8] == '1'
local held = {}
for i = 9, #ARGV do held[ARGV[i]] = true end
local r = redis.call('XAUTOCLAIM', stream, group, me, min_idle, cursor, 'COUNT', count)
local deleted = r[3] or {}
for _, id in ipairs(deleted) do redis.call('HDEL', errors, id) end
local run, buried = {}, 0
for _, e in ipairs(r[2]) do
  if e and e[2] then
    local id = e[1]
    local _, n = owner(stream, group, id)
    if held[id] then
      -- Already ours (a lease refresh ran late): undo the claim's count bump.
      redis.call('XCLAIM', stream, group, me, 0, id, 'RETRYCOUNT', n - 1, 'JUSTID')
    elseif n > maxd then
      local err = redis.call('HGET', errors, id)
      if not err then
        err = 'delivered ' .. n .. ' times, more than max_deliveries (' .. maxd .. ')'
      end
      bury(stream, dead, dmax, id, err, n, me)
      finish(stream, group, errors, id, del)
      buried = buried + 1
    else
      run[#run + 1] = {id, e[2], n}
    end
  end
end
return {r[1], run, buried, #deleted}
";

/// Removes consumers (other than this one) with nothing pending, idle longer than ARGV[3] ms.
/// Checked and removed in one script, so a consumer that just read cannot lose its entries.
const FORGET: &str = r"
local stream, group, me, idle = KEYS[1], ARGV[1], ARGV[2], tonumber(ARGV[3])
local removed = {}
for _, c in ipairs(redis.call('XINFO', 'CONSUMERS', stream, group)) do
  local name, pending, cidle
  for i = 1, #c, 2 do
    if c[i] == 'name' then name = c[i + 1]
    elseif c[i] == 'pending' then pending = c[i + 1]
    elseif c[i] == 'idle' then cidle = c[i + 1] end
  end
  if name ~= me and pending == 0 and cidle > idle then
    redis.call('XGROUP', 'DELCONSUMER', stream, group, name)
    removed[#removed + 1] = name
  end
end
return removed
";

/// Adds to a stream only below a length: `{1, id}`, or `{0, len}` when full.
const BOUNDED_ADD: &str = r"
local len = redis.call('XLEN', KEYS[1])
local cap, n = tonumber(ARGV[1]), tonumber(ARGV[2])
if len + n > cap then return {0, len} end
local ids = {}
for i = 3, #ARGV do
  ids[#ids + 1] = redis.call('XADD', KEYS[1], '*', 'payload', ARGV[i])
end
return {1, ids}
";

/// What became of a finished entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// Write the output (if there is a result stream) and acknowledge.
    Ok(Vec<u8>),
    /// Record the error; the entry stays pending with this consumer for a retry.
    Retry(String),
    /// Move the entry, all its fields and this reason to the dead-letter stream; acknowledge.
    Dead(String),
}

/// The names and limits the scripts work with.
#[derive(Debug, Clone)]
pub(crate) struct Keys {
    pub(crate) stream: String,
    pub(crate) group: String,
    pub(crate) consumer: String,
    pub(crate) errors: String,
    pub(crate) dead: String,
    pub(crate) results: Option<String>,
    pub(crate) results_max_len: u64,
    pub(crate) dead_max_len: u64,
    pub(crate) delete_acked: bool,
}

/// An entry a claim handed over: id, all fields, exact delivery count.
pub(crate) type Claimed = (String, Vec<(String, Vec<u8>)>, u64);

/// What one claim did.
pub(crate) struct ClaimReply {
    pub(crate) cursor: String,
    pub(crate) run: Vec<Claimed>,
    pub(crate) buried: u64,
}

pub(crate) struct Scripts {
    settle: Script,
    lease: Script,
    claim: Script,
    forget: Script,
}

impl Scripts {
    pub(crate) fn new() -> Scripts {
        let with = |body: &str| Script::new(&format!("{COMMON}{body}"));
        Scripts {
            settle: with(SETTLE),
            lease: with(LEASE),
            claim: with(CLAIM),
            forget: with(FORGET),
        }
    }

    /// Settles `(id, verdict, deliveries)` triples; one reply per entry (see `SETTLE`).
    pub(crate) fn settle(
        &self,
        con: &mut Connection,
        k: &Keys,
        items: &[(&str, &Verdict, u64)],
    ) -> RedisResult<Vec<i64>> {
        let mut call = self.settle.prepare_invoke();
        call.key(&k.stream)
            .key(&k.errors)
            .key(k.results.as_deref().unwrap_or(&k.stream))
            .key(&k.dead)
            .arg(&k.group)
            .arg(&k.consumer)
            .arg(k.results_max_len)
            .arg(k.dead_max_len)
            .arg(if k.delete_acked { "1" } else { "0" })
            .arg(if k.results.is_some() { "1" } else { "0" });
        for (id, verdict, deliveries) in items {
            call.arg(*id);
            match verdict {
                Verdict::Ok(output) => call.arg("ok").arg(output.as_slice()),
                Verdict::Retry(error) => call.arg("retry").arg(error.as_str()),
                Verdict::Dead(reason) => call.arg("dead").arg(reason.as_str()),
            };
            call.arg(*deliveries);
        }
        call.invoke(con)
    }

    /// Re-claims held ids with this idle time (ms) and optional new delivery counts.
    pub(crate) fn lease(
        &self,
        con: &mut Connection,
        k: &Keys,
        idle_ms: u64,
        items: &[(&str, Option<u64>)],
    ) -> RedisResult<Vec<i64>> {
        let mut call = self.lease.prepare_invoke();
        call.key(&k.stream)
            .arg(&k.group)
            .arg(&k.consumer)
            .arg(idle_ms);
        for (id, count) in items {
            call.arg(*id)
                .arg(count.map(|c| c.to_string()).unwrap_or_default());
        }
        call.invoke(con)
    }

    /// Claims up to `count` entries idle at least `min_idle_ms`, from `cursor`.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn claim<'a>(
        &self,
        con: &mut Connection,
        k: &Keys,
        min_idle_ms: u64,
        cursor: &str,
        count: usize,
        max_deliveries: u64,
        held: impl Iterator<Item = &'a String>,
    ) -> RedisResult<ClaimReply> {
        let mut call = self.claim.prepare_invoke();
        call.key(&k.stream)
            .key(&k.errors)
            .key(&k.dead)
            .arg(&k.group)
            .arg(&k.consumer)
            .arg(min_idle_ms)
            .arg(cursor)
            .arg(count)
            .arg(max_deliveries)
            .arg(k.dead_max_len)
            .arg(if k.delete_acked { "1" } else { "0" });
        for id in held {
            call.arg(id.as_str());
        }
        let reply: Value = call.invoke(con)?;
        parse_claim(reply)
    }

    /// Removes other consumers with nothing pending, idle longer than `idle_ms`.
    pub(crate) fn forget(
        &self,
        con: &mut Connection,
        k: &Keys,
        idle_ms: u64,
    ) -> RedisResult<Vec<String>> {
        self.forget
            .key(&k.stream)
            .arg(&k.group)
            .arg(&k.consumer)
            .arg(idle_ms)
            .invoke(con)
    }
}

/// Adds payloads unless the stream would then hold more than `capacity` entries.
/// `Ok(Ok(ids))`, or `Ok(Err(len))` when full.
pub(crate) fn bounded_add<P: AsRef<[u8]>>(
    con: &mut Connection,
    stream: &str,
    capacity: u64,
    payloads: &[P],
) -> RedisResult<Result<Vec<String>, u64>> {
    let script = Script::new(BOUNDED_ADD);
    let mut call = script.prepare_invoke();
    call.key(stream).arg(capacity).arg(payloads.len());
    for p in payloads {
        call.arg(p.as_ref());
    }
    let (added, rest): (i64, Value) = call.invoke(con)?;
    if added == 1 {
        Ok(Ok(redis::from_redis_value(rest)?))
    } else {
        Ok(Err(redis::from_redis_value(rest)?))
    }
}

fn parse_claim(reply: Value) -> RedisResult<ClaimReply> {
    let (cursor, run, buried, _deleted): (String, Vec<Value>, u64, u64) =
        redis::from_redis_value(reply)?;
    let mut claimed = Vec::with_capacity(run.len());
    for item in run {
        let (id, flat, deliveries): (String, Vec<Vec<u8>>, u64) = redis::from_redis_value(item)?;
        let mut fields = Vec::with_capacity(flat.len() / 2);
        let mut flat = flat.into_iter();
        while let (Some(name), Some(value)) = (flat.next(), flat.next()) {
            fields.push((String::from_utf8_lossy(&name).into_owned(), value));
        }
        claimed.push((id, fields, deliveries));
    }
    Ok(ClaimReply {
        cursor,
        run: claimed,
        buried,
    })
}
