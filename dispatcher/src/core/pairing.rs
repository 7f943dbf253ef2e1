//! Pairing codes (extension 5): six CSPRNG digits per node, unique among live
//! codes, expiring; and the per-address guess limit.

use std::collections::HashMap;
use std::net::IpAddr;

use rand::RngCore;

use super::Millis;

#[derive(Debug)]
struct Entry {
    node: String,
    expires_at: Millis,
    /// The dispatcher of the cluster that issued it (`None`: this one).
    origin: Option<String>,
}

#[derive(Debug)]
struct GuessWindow {
    started: Millis,
    failures: u32,
}

/// Why a code was not redeemed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Refusal {
    /// Too many wrong codes from this address in the window.
    RateLimited,
    /// Unknown, expired, or its node is gone.
    Unknown,
}

const GUESS_TABLE_MAX: usize = 100_000;

#[derive(Debug, Default)]
pub(super) struct Pairing {
    codes: HashMap<String, Entry>,
    guesses: HashMap<IpAddr, GuessWindow>,
}

impl Pairing {
    /// A fresh code for `node` (replacing its old one), or `None` if no free
    /// code was drawn (live codes are at most one per node, far fewer than
    /// 10^6, so a free one is found in a few draws; the bound rules out a spin).
    pub fn issue(&mut self, rng: &mut impl RngCore, node: &str, expires_at: Millis) -> Option<String> {
        self.codes.retain(|_, e| e.node != node);
        let code = (0..1_000).map(|_| format!("{:06}", rng.next_u32() % 1_000_000)).find(|c| !self.codes.contains_key(c))?;
        self.codes.insert(code.clone(), Entry { node: node.to_owned(), expires_at, origin: None });
        Some(code)
    }

    /// The node a code binds to, if `addr` may still guess and the code is live.
    pub fn redeem(
        &mut self,
        now: Millis,
        addr: IpAddr,
        code: &str,
        max_failures: u32,
        window: Millis,
        node_exists: impl Fn(&str) -> bool,
    ) -> Result<String, Refusal> {
        let w = self.guesses.get(&addr).filter(|w| now < w.started + window);
        if w.is_some_and(|w| w.failures >= max_failures) {
            return Err(Refusal::RateLimited);
        }
        match self.codes.get(code) {
            Some(e) if e.expires_at > now && node_exists(&e.node) => Ok(e.node.clone()),
            _ => {
                self.count_failure(now, addr, window);
                Err(Refusal::Unknown)
            }
        }
    }

    /// One wrong guess from `addr` (here, or on another dispatcher of the cluster).
    pub fn count_failure(&mut self, now: Millis, addr: IpAddr, window: Millis) {
        if self.guesses.len() < GUESS_TABLE_MAX || self.guesses.contains_key(&addr) {
            let entry = self.guesses.entry(addr).or_insert(GuessWindow { started: now, failures: 0 });
            if now >= entry.started + window {
                *entry = GuessWindow { started: now, failures: 0 };
            }
            entry.failures += 1;
        }
    }

    /// Live codes issued here: (code, node, expiry), for the cluster.
    pub fn local_codes(&self, now: Millis) -> Vec<(String, String, Millis)> {
        self.codes
            .iter()
            .filter(|(_, e)| e.origin.is_none() && e.expires_at > now)
            .map(|(c, e)| (c.clone(), e.node.clone(), e.expires_at))
            .collect()
    }

    /// The live codes dispatcher `origin` issued, replacing what it said
    /// before (a code issued here wins a clash).
    pub fn learn(&mut self, origin: &str, codes: impl IntoIterator<Item = (String, String, Millis)>, now: Millis) {
        self.codes.retain(|_, e| e.origin.as_deref() != Some(origin));
        for (code, node, expires_at) in codes {
            if self.codes.len() >= GUESS_TABLE_MAX || expires_at <= now || code.len() != 6 {
                continue;
            }
            self.codes.entry(code).or_insert(Entry { node, expires_at, origin: Some(origin.to_owned()) });
        }
    }

    /// Forgets the codes of dispatchers that are gone.
    pub fn forget_origins(&mut self, gone: &[String]) {
        self.codes.retain(|_, e| e.origin.as_ref().is_none_or(|o| !gone.contains(o)));
    }

    pub fn sweep(&mut self, now: Millis, window: Millis) {
        self.codes.retain(|_, e| e.expires_at > now);
        self.guesses.retain(|_, w| now < w.started + window);
    }

    pub fn codes(&self) -> usize {
        self.codes.len()
    }

    pub fn guesses(&self) -> usize {
        self.guesses.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    #[test]
    fn codes_bind_one_node_expire_and_wrong_guesses_are_limited() {
        let mut p = Pairing::default();
        let mut rng = rand::rngs::StdRng::seed_from_u64(1);
        let addr: IpAddr = [127, 0, 0, 1].into();
        let code = p.issue(&mut rng, "n1", 100).unwrap_or_default();
        assert_eq!(code.len(), 6);
        let again = p.issue(&mut rng, "n1", 100).unwrap_or_default();
        assert_eq!(p.codes(), 1, "one live code per node");
        assert_eq!(p.redeem(0, addr, &again, 5, 60, |_| true), Ok("n1".into()));
        assert_eq!(p.redeem(100, addr, &again, 5, 60, |_| true), Err(Refusal::Unknown), "expired");
        for _ in 0..4 {
            assert_eq!(p.redeem(1, addr, "000000", 5, 60, |_| true), Err(Refusal::Unknown));
        }
        assert_eq!(p.redeem(2, addr, &again, 5, 60, |_| true), Err(Refusal::RateLimited), "even the right code");
        p.sweep(200, 60);
        assert_eq!((p.codes(), p.guesses()), (0, 0));
    }
}
