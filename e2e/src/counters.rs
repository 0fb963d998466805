//! A node's counters as `kxdpctl counters --json` reports them.

use super::*;

/// A node's counters (`kxdpctl counters --json`).
#[derive(Clone, Debug)]
pub struct Counters(pub Value);

impl Counters {
    /// Drop counters by reason. Accepts `drops` as a list of
    /// `{reason, packets}` or as a map reason -> packets.
    pub fn drops(&self) -> BTreeMap<String, u64> {
        let mut out = BTreeMap::new();
        match &self.0["drops"] {
            Value::Array(list) => {
                for d in list {
                    if let Some(r) = d["reason"].as_str() {
                        out.insert(r.to_string(), d["packets"].as_u64().unwrap_or(0));
                    }
                }
            }
            Value::Object(map) => {
                for (r, n) in map {
                    out.insert(r.clone(), n.as_u64().unwrap_or(0));
                }
            }
            _ => {}
        }
        out
    }

    /// A top-level number such as `encapsulated`; 0 when absent.
    pub fn get(&self, key: &str) -> u64 {
        self.0[key].as_u64().unwrap_or(0)
    }

    pub fn total_drops(&self) -> u64 {
        self.drops().values().sum()
    }

    /// Per-reason increase since `before` (reasons that did not change omitted).
    pub fn drops_since(&self, before: &Counters) -> BTreeMap<String, u64> {
        let old = before.drops();
        self.drops()
            .into_iter()
            .filter_map(|(r, n)| {
                let d = n.saturating_sub(old.get(&r).copied().unwrap_or(0));
                (d > 0).then_some((r, d))
            })
            .collect()
    }
}
