//! The script that records a device's ping (or its leave) and publishes what watchers see:
//! the presence rules of [`presence`](crate::presence) applied atomically where the data is,
//! so instances never disagree about a user.
//!
//! KEYS: the user's presence hash and devices hash (one slot on a cluster). ARGV: now (UTC
//! epoch microseconds), the device, the status, the channel, the publishing command
//! (`PUBLISH`, or `SPUBLISH` on a cluster), and `1` for a leave. Replies with the id of what it
//! published, or nil when nothing a watcher can see changed (an invisible user's pings).
//!
//! The rules are written into the script's text at start (the TTL, the device limit, the rank
//! of each status and the invisible ones), so a call parses nothing but its arguments; every
//! instance on one Redis must run with the same rules. Microseconds since 1970 fit exactly in
//! a Lua number (a double) until the year 2255.

use redis::Script;

use crate::presence::Rules;

const TEMPLATE: &str = r"
local TTL, MAX, UNLISTED = @TTL, @MAX, @UNLISTED
local RANK = {@RANK}
local INVISIBLE = {@INVISIBLE}
local now, device, status = tonumber(ARGV[1]), ARGV[2], ARGV[3]
local leaving = ARGV[6] == '1'
local flat = redis.call('HGETALL', KEYS[2])
local live = {}
for i = 1, #flat, 2 do
  local at, st = string.match(flat[i + 1], '^(%d+) (.*)$')
  at = tonumber(at)
  if flat[i] ~= device then
    if at and at + TTL > now then
      live[#live + 1] = {flat[i], at, st}
    else
      redis.call('HDEL', KEYS[2], flat[i])
    end
  end
end
if leaving then
  redis.call('HDEL', KEYS[2], device)
else
  if #live >= MAX then
    local oldest = 1
    for i = 2, #live do
      if live[i][2] < live[oldest][2] then oldest = i end
    end
    redis.call('HDEL', KEYS[2], live[oldest][1])
    table.remove(live, oldest)
  end
  live[#live + 1] = {device, now, status}
  redis.call('HSET', KEYS[2], device, ARGV[1] .. ' ' .. status)
end
local hidden, best, best_rank, best_at, newest = false, nil, 0, 0, 0
for _, d in ipairs(live) do
  if INVISIBLE[d[3]] then
    hidden = true
  else
    local rank = RANK[d[3]] or UNLISTED
    if best == nil or rank < best_rank or (rank == best_rank and d[2] > best_at) then
      best, best_rank, best_at = d[3], rank, d[2]
    end
    if d[2] > newest then newest = d[2] end
  end
end
if hidden then best = nil end
local h = redis.call('HMGET', KEYS[1], 'seq', 'time', 'status', 'expires', 'off')
local seq, expires_was, off = tonumber(h[1]), tonumber(h[4]), tonumber(h[5])
if seq and not expires_was then expires_was = tonumber(h[2]) * 1000000 + TTL end
local floor = 0
if seq then
  floor = seq + 1
  if off then
    floor = math.max(seq, off) + 1
  elseif expires_was <= now then
    floor = math.max(seq, expires_was) + 1
  end
end
local id = string.format('%d', math.max(floor, now))
if best == nil then
  if seq and not off and expires_was > now then
    redis.call('HSET', KEYS[1], 'off', id)
    redis.call(ARGV[5], ARGV[4], 'o ' .. id .. ' ' .. h[2])
    return id
  end
  return false
end
local expires = newest + TTL
if leaving and not off and h[3] == best and expires_was == expires then return false end
local time = string.format('%d', math.floor(newest / 1000000))
local until_ = string.format('%d', expires)
redis.call('HSET', KEYS[1], 'seq', id, 'time', time, 'status', best, 'expires', until_)
if off then redis.call('HDEL', KEYS[1], 'off') end
redis.call(ARGV[5], ARGV[4], 'p ' .. id .. ' ' .. time .. ' ' .. until_ .. ' ' .. best)
return id
";

/// The record script for a set of rules: its text, to load, and its SHA1, to call.
#[derive(Debug, Clone)]
pub struct RecordScript {
    pub text: String,
    pub sha: String,
}

impl RecordScript {
    pub fn new(rules: &Rules) -> RecordScript {
        let rank: Vec<String> = (rules.priority.iter().enumerate())
            .map(|(i, status)| format!("[{}]={i}", lua_string(status)))
            .collect();
        let invisible: Vec<String> = (rules.invisible.iter())
            .map(|status| format!("[{}]=true", lua_string(status)))
            .collect();
        let text = TEMPLATE
            .replace("@TTL", &rules.ttl_micros().to_string())
            .replace("@MAX", &rules.max_devices.max(1).to_string())
            .replace("@UNLISTED", &rules.priority.len().to_string())
            .replace("@RANK", &rank.join(","))
            .replace("@INVISIBLE", &invisible.join(","));
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
        assert!(
            script
                .text
                .contains("local TTL, MAX, UNLISTED = 60000000, 16, 2\n")
        );
        assert!(
            script
                .text
                .contains(r#"local RANK = {["\50"]=0,["\97\34\93"]=1}"#)
        );
        assert!(script.text.contains(r#"local INVISIBLE = {["\51"]=true}"#));
        assert!(!script.text.contains('@'));
        assert_eq!(script.sha.len(), 40);
        assert_ne!(script.sha, RecordScript::new(&Rules::default()).sha);
    }
}
