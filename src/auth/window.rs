//! The time window of a signature: `created` within the clock skew, not past `expires`,
//! and held to the skew in force when it was made if a reload raised it since.

/// The skew a signature created at `created` is held to: `skew`, or a smaller one in
/// force when it was made (`earlier`, see `carry_skews`: its nonce is remembered only
/// for that window).
pub fn skew_for(skew: i64, earlier: &[(i64, i64)], created: i64) -> i64 {
    let earlier = earlier.iter().filter(|(until, _)| created < *until);
    earlier.map(|(_, s)| *s).fold(skew, i64::min)
}

/// `earlier_skews` after a reload at `now` (unix seconds) from the `old` `(skew, future
/// skew)` to a `new_skew`: a raise remembers the old skew for every `created` a signature
/// verified before the reload can carry (up to `now + future`: a client clock ahead);
/// an entry no signature can reach any more is dropped.
pub fn carry_skews(
    earlier: &[(i64, i64)],
    (old_skew, old_future): (i64, i64),
    new_skew: i64,
    now: i64,
) -> Vec<(i64, i64)> {
    let mut out: Vec<(i64, i64)> = earlier
        .iter()
        .copied()
        // A signature created before `until` is fresh under the new skew until
        // `until + new_skew` at most.
        .filter(|(until, _)| now <= until + new_skew)
        .collect();
    if new_skew > old_skew {
        out.push((now + old_future + 1, old_skew));
    }
    out
}

/// `created` within `[now - skew, now + future]`, not past `expires`; returns the last
/// second the signature is fresh (until then its nonce is remembered), or why it is stale.
pub fn window_check(
    created: i64,
    expires: Option<i64>,
    now: i64,
    (skew, future): (i64, i64),
) -> Result<i64, &'static str> {
    if created < now - skew {
        return Err("created too old");
    }
    if created > now + future {
        return Err("created in the future");
    }
    let mut end = created.saturating_add(skew);
    if let Some(exp) = expires {
        if exp < now {
            return Err("expired");
        }
        end = end.min(exp);
    }
    Ok(end)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn window_rules() {
        assert!(window_check(1000, None, 1000, (300, 60)).is_ok());
        assert_eq!(window_check(1000, None, 1000, (300, 60)).unwrap(), 1300);
        assert!(window_check(699, None, 1000, (300, 60)).is_err());
        assert!(window_check(1061, None, 1000, (300, 60)).is_err());
        assert!(window_check(1060, None, 1000, (300, 60)).is_ok());
        assert_eq!(
            window_check(1000, Some(1100), 1000, (300, 60)).unwrap(),
            1100,
            "expires only shortens"
        );
        assert_eq!(
            window_check(1000, Some(5000), 1000, (300, 60)).unwrap(),
            1300
        );
        assert!(window_check(1000, Some(999), 1000, (300, 60)).is_err());
    }

    /// A reload raising `clock_skew_s` from 60 to 3600 let a signature made before it, whose
    /// nonce was remembered for 60 s (and the grace), be replayed once that was forgotten.
    #[test]
    fn a_raised_skew_holds_older_signatures_to_the_window_they_were_made_in() {
        let carried = carry_skews(&[], (60, 60), 3600, 10_000);
        assert_eq!(carried, vec![(10_061, 60)]);
        let window = |created: i64, now: i64| {
            let skew = skew_for(3600, &carried, created);
            window_check(created, None, now, (skew, 60))
        };
        // Made before the reload: 60 s, whatever the new skew.
        assert!(window(9_990, 10_200).is_err());
        // Verified just before it with a clock 55 s ahead (its nonce kept for 60 s and
        // the grace): still held to 60 s.
        assert!(window(10_055, 10_300).is_err());
        // Made after it: the new skew.
        assert!(window(10_070, 12_000).is_ok());
        // Lowering keeps nothing new; an entry no signature can reach is dropped.
        assert_eq!(carry_skews(&carried, (3600, 60), 60, 10_100), carried);
        assert!(carry_skews(&carried, (3600, 60), 3600, 20_000).is_empty());
    }
}
