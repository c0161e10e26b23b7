//! Active-learning strategies: which unlabeled image a client should annotate next.
//!
//! * `random`: a random image, weighted by how long ago it was last served by this strategy
//!   (`now - info.strategy.random.ts`; never served → `now`), so recently served images are
//!   unlikely to come back soon. The response carries the chosen image's `weight` (MONAI Label
//!   reports the first image's weight instead; no client reads it).
//! * `first`: the smallest id in string order.
//! * `epistemic`: the image with the highest stored epistemic uncertainty
//!   (`info.epistemic_entropy`, from Monte Carlo dropout, see [`crate::scoring`]); ties go to
//!   the smallest id. The server scores the unlabeled images that lack a current score before
//!   it asks this strategy.
//!
//! Options come from the request body: `seed` (an integer) makes `random` deterministic;
//! `epistemic` takes the Monte Carlo options of [`crate::scoring::EpistemicOptions`].

use rand::distributions::{Distribution, WeightedIndex};
use rand::{rngs::StdRng, SeedableRng};
use serde_json::{Map, Value};

/// An unlabeled image a strategy may pick.
#[derive(Debug, Clone)]
pub struct Candidate {
    /// The image id.
    pub id: String,
    /// Its datastore info (for `strategy.<name>.ts`).
    pub info: Map<String, Value>,
}

/// The strategies this crate implements.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Strategy {
    /// Weighted random choice.
    Random,
    /// The first id in sort order.
    First,
    /// The highest epistemic uncertainty (Monte Carlo dropout).
    Epistemic,
}

impl Strategy {
    /// All strategies, in `/info/` order.
    pub const ALL: [Strategy; 3] = [Strategy::Random, Strategy::First, Strategy::Epistemic];

    /// The strategy's protocol name.
    pub fn name(self) -> &'static str {
        match self {
            Strategy::Random => "random",
            Strategy::First => "first",
            Strategy::Epistemic => "epistemic",
        }
    }

    /// The description `/info/` shows.
    pub fn description(self) -> &'static str {
        match self {
            Strategy::Random => "Random Strategy",
            Strategy::First => "Get First Sample",
            Strategy::Epistemic => {
                "Get the sample with the highest epistemic uncertainty (Monte Carlo dropout)"
            }
        }
    }

    /// Looks a strategy up by name.
    pub fn from_name(name: &str) -> Option<Strategy> {
        Strategy::ALL.into_iter().find(|s| s.name() == name)
    }

    /// Picks an image; `None` when there is no candidate (for `epistemic`: no scored
    /// candidate). The result holds `id` (and `weight` for `random`, `epistemic_entropy` for
    /// `epistemic`). `now` is epoch seconds; `seed` makes `random` deterministic.
    pub fn select(
        self,
        candidates: &[Candidate],
        now: i64,
        seed: Option<u64>,
    ) -> Option<Map<String, Value>> {
        if candidates.is_empty() {
            return None;
        }
        let mut out = Map::new();
        match self {
            Strategy::First => {
                let c = candidates.iter().min_by(|a, b| a.id.cmp(&b.id))?;
                out.insert("id".into(), c.id.clone().into());
            }
            Strategy::Random => {
                let weights: Vec<i64> = candidates
                    .iter()
                    .map(|c| {
                        let ts = c
                            .info
                            .get("strategy")
                            .and_then(|s| s.get(self.name()))
                            .and_then(|s| s.get("ts"))
                            .and_then(Value::as_i64)
                            .unwrap_or(0);
                        now.saturating_sub(ts).max(0)
                    })
                    .collect();
                let mut rng = match seed {
                    Some(s) => StdRng::seed_from_u64(s),
                    None => StdRng::from_entropy(),
                };
                let i = match WeightedIndex::new(weights.iter().map(|&w| w as f64)) {
                    Ok(dist) => dist.sample(&mut rng),
                    // every image was served this very second: fall back to a uniform choice
                    Err(_) => rand::Rng::gen_range(&mut rng, 0..candidates.len()),
                };
                out.insert("id".into(), candidates[i].id.clone().into());
                out.insert("weight".into(), weights[i].into());
            }
            Strategy::Epistemic => {
                let (c, score) = candidates
                    .iter()
                    .filter_map(|c| Some((c, epistemic_score(&c.info)?)))
                    .min_by(|(a, sa), (b, sb)| sb.total_cmp(sa).then_with(|| a.id.cmp(&b.id)))?;
                out.insert("id".into(), c.id.clone().into());
                out.insert("epistemic_entropy".into(), score.into());
            }
        }
        Some(out)
    }
}

/// The stored epistemic score of an image (`info.epistemic_entropy`), if it is a number.
pub fn epistemic_score(info: &Map<String, Value>) -> Option<f64> {
    info.get("epistemic_entropy")
        .and_then(Value::as_f64)
        .filter(|x| x.is_finite())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn cand(id: &str, info: Value) -> Candidate {
        Candidate {
            id: id.into(),
            info: info.as_object().unwrap().clone(),
        }
    }

    #[test]
    fn first_is_smallest_id() {
        let c = [
            cand("b", json!({})),
            cand("a", json!({})),
            cand("c", json!({})),
        ];
        assert_eq!(Strategy::First.select(&c, 100, None).unwrap()["id"], "a");
        assert!(Strategy::First.select(&[], 100, None).is_none());
    }

    #[test]
    fn random_avoids_just_served() {
        let now = 1_000_000;
        let c = [
            cand("served", json!({"strategy": {"random": {"ts": now}}})),
            cand("fresh", json!({})),
        ];
        for _ in 0..50 {
            let r = Strategy::Random.select(&c, now, None).unwrap();
            assert_eq!(r["id"], "fresh");
            assert_eq!(r["weight"], now);
        }
        let all_served = [cand("x", json!({"strategy": {"random": {"ts": now}}}))];
        assert_eq!(
            Strategy::Random.select(&all_served, now, None).unwrap()["id"],
            "x"
        );
    }

    #[test]
    fn random_with_a_seed_is_deterministic() {
        let c: Vec<Candidate> = (0..20)
            .map(|i| cand(&format!("img{i:02}"), json!({})))
            .collect();
        let pick = |seed| Strategy::Random.select(&c, 1000, Some(seed)).unwrap()["id"].clone();
        let first = pick(42);
        for _ in 0..10 {
            assert_eq!(pick(42), first);
        }
        let distinct: std::collections::BTreeSet<String> = (0..40)
            .map(|s| pick(s).as_str().unwrap().to_string())
            .collect();
        assert!(distinct.len() > 1, "different seeds pick different images");
    }

    #[test]
    fn epistemic_takes_the_highest_score() {
        let c = [
            cand("a", json!({"epistemic_entropy": 0.5})),
            cand("b", json!({"epistemic_entropy": 1.25})),
            cand("c", json!({})),
            cand("d", json!({"epistemic_entropy": 1.25})),
            cand("e", json!({"epistemic_entropy": "high"})),
        ];
        let r = Strategy::Epistemic.select(&c, 0, None).unwrap();
        assert_eq!(r["id"], "b");
        assert_eq!(r["epistemic_entropy"], 1.25);
        assert!(Strategy::Epistemic
            .select(&[cand("c", json!({}))], 0, None)
            .is_none());
    }

    #[test]
    fn names() {
        assert_eq!(Strategy::from_name("random"), Some(Strategy::Random));
        assert_eq!(Strategy::from_name("epistemic"), Some(Strategy::Epistemic));
        assert_eq!(Strategy::from_name("last"), None);
    }
}
