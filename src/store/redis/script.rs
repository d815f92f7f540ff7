//! The script that records a device's ping (or its leave) and publishes what watchers see:
//! the presence rules of [`presence`](crate::presence) applied atomically where the data is,
//! so instances never disagree about a user.
//!
//! KEYS: the user's hash, which holds the presence and, as `d:<device>` fields, the devices.
//! ARGV: now (UTC epoch microseconds), `d:<device>`, the status, the channel, the publishing
//! command (`PUBLISH`, or `SPUBLISH` on a cluster), `1` for a leave, and for the common case
//! (the pinging device is the newest) now in seconds and the expiry in microseconds, as text:
//! a ping then reads and writes the hash once each and formats no number. Replies with the id
//! of what it published, or nil when nothing a watcher can see changed (an invisible user's
//! pings).
//!
//! The rules are written into the script's text at start (the TTL, the device limit, the rank
//! of each status and the invisible ones, as comparisons), so a call parses nothing but its
//! arguments and the user's fields, in one pass; every
//! instance on one Redis must run with the same rules. Microseconds since 1970 fit exactly in
//! a Lua number (a double) until the year 2255.

use redis::Script;

use crate::presence::Rules;

const TEMPLATE: &str = r"
local TTL, MAX = @TTL, @MAX
local now, me, status = tonumber(ARGV[1]), ARGV[2], ARGV[3]
local leaving = ARGV[6] == '1'
local flat = redis.call('HGETALL', KEYS[1])
local seq, time_was, expires_was, status_was, off, legacy
local hidden, best, best_rank, best_at, newest, others, oldest, oldest_at, gone
local evicted = nil
for pass = 1, 2 do
  hidden, best, best_rank, best_at, newest, others, oldest, oldest_at = false, nil, 0, 0, 0, 0, nil, 0
  if not leaving then
    local st, at = status, now
    @VISIT
  end
  for i = 1, #flat, 2 do
    local k = flat[i]
    if k == me or k == evicted then
    elseif k == 'p' then
      local a, b, c, d = string.match(flat[i + 1], '^(%d+) (%d+) (%d+) (.*)$')
      seq, time_was, expires_was, status_was = tonumber(a), b, tonumber(c), d
    elseif k == 'off' then
      off = tonumber(flat[i + 1])
    elseif string.byte(k, 1) == 100 and string.byte(k, 2) == 58 then
      local at, st = string.match(flat[i + 1], '^(%d+) (.*)$')
      at = tonumber(at)
      if at + TTL > now then
        others = others + 1
        if oldest == nil or at < oldest_at then oldest, oldest_at = k, at end
        @VISIT
      elseif pass == 1 then
        gone = gone or {}
        gone[#gone + 1] = k
      end
    elseif (k == 'seq' or k == 'time' or k == 'status') and pass == 1 then
      legacy = legacy or {}
      legacy[k] = flat[i + 1]
      gone = gone or {}
      gone[#gone + 1] = k
    end
  end
  if pass == 2 or leaving or others < MAX then break end
  evicted = oldest
  gone = gone or {}
  gone[#gone + 1] = evicted
end
if leaving then
  gone = gone or {}
  gone[#gone + 1] = me
end
if not seq and legacy and legacy.seq then
  seq, time_was, status_was = tonumber(legacy.seq), legacy.time or '0', legacy.status or ''
  expires_was = tonumber(time_was) * 1000000 + TTL
end
if hidden then best = nil end
local floor = 0
if seq then
  floor = seq + 1
  if off then
    floor = math.max(seq, off) + 1
  elseif expires_was <= now then
    floor = math.max(seq, expires_was) + 1
  end
end
local id = ARGV[1]
if floor > now then id = string.format('%d', floor) end
local message, presence
if best == nil then
  if seq and not off and expires_was > now then
    message = 'o ' .. id .. ' ' .. time_was
  end
else
  local expires = newest + TTL
  if not (leaving and not off and status_was == best and expires_was == expires) then
    local time, until_ = ARGV[7], ARGV[8]
    if newest ~= now then
      time = string.format('%d', math.floor(newest / 1000000))
      until_ = string.format('%d', expires)
    end
    presence = id .. ' ' .. time .. ' ' .. until_ .. ' ' .. best
    message = 'p ' .. presence
    if off then
      gone = gone or {}
      gone[#gone + 1] = 'off'
    end
  end
end
if gone then redis.call('HDEL', KEYS[1], unpack(gone)) end
local device = ARGV[1] .. ' ' .. status
if presence and not leaving then
  redis.call('HSET', KEYS[1], me, device, 'p', presence)
elseif presence then
  redis.call('HSET', KEYS[1], 'p', presence)
elseif message and not leaving then
  redis.call('HSET', KEYS[1], me, device, 'off', id)
elseif message then
  redis.call('HSET', KEYS[1], 'off', id)
elseif not leaving then
  redis.call('HSET', KEYS[1], me, device)
end
if message then
  redis.call(ARGV[5], ARGV[4], message)
  return id
end
return false
";

/// The record script for a set of rules: its text, to load, and its SHA1, to call.
#[derive(Debug, Clone)]
pub struct RecordScript {
    pub text: String,
    pub sha: String,
}

impl RecordScript {
    pub fn new(rules: &Rules) -> RecordScript {
        // The rank and the invisibility of a status as comparisons, not tables: a table
        // constructor would run on every call.
        let rank_of: Vec<String> = (rules.priority.iter().enumerate())
            .map(|(i, status)| format!("if st == {} then rank = {i} end", lua_string(status)))
            .collect();
        let hide_if: Vec<String> = (rules.invisible.iter())
            .map(|status| format!("if st == {} then hidden = true end", lua_string(status)))
            .collect();
        // One device's turn in the merge: written out where it is needed, so a call makes
        // no closure.
        let visit = format!(
            "local rank = {unlisted}\n{rank_of}\n{hide_if}\n\
             if best == nil or rank < best_rank or (rank == best_rank and at > best_at) then\n\
             best, best_rank, best_at = st, rank, at\n\
             end\n\
             if at > newest then newest = at end",
            unlisted = rules.priority.len(),
            rank_of = rank_of.join("\n"),
            hide_if = hide_if.join("\n"),
        );
        let text = TEMPLATE
            .replace("@TTL", &rules.ttl_micros().to_string())
            .replace("@MAX", &rules.max_devices.max(1).to_string())
            .replace("@VISIT", &visit);
        let sha = Script::new(&text).get_hash().to_owned();
        RecordScript { text, sha }
    }
}

/// `text` as a Lua string literal: every byte as a decimal escape, so no status can end the
/// literal or change the script.
fn lua_string(text: &str) -> String {
    let mut literal = String::with_capacity(text.len() * 4 + 2);
    literal.push('"');
    for byte in text.bytes() {
        literal.push_str(&format!("\\{byte}"));
    }
    literal.push('"');
    literal
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_rules_are_written_into_the_script_with_statuses_escaped() {
        let rules = Rules {
            device_ttl: std::time::Duration::from_secs(60),
            max_devices: 16,
            priority: vec!["2".into(), "a\"]".into()],
            invisible: vec!["3".into()],
        };
        let script = RecordScript::new(&rules);
        let text = &script.text;
        assert!(text.contains("local TTL, MAX = 60000000, 16\n"));
        assert_eq!(
            text.matches("local rank = 2\n").count(),
            2,
            "the visit, twice"
        );
        assert!(text.contains(r#"if st == "\50" then rank = 0 end"#));
        assert!(text.contains(r#"if st == "\97\34\93" then rank = 1 end"#));
        assert!(text.contains(r#"if st == "\51" then hidden = true end"#));
        assert!(!script.text.contains('@'));
        assert_eq!(script.sha.len(), 40);
        assert_ne!(script.sha, RecordScript::new(&Rules::default()).sha);
    }
}
