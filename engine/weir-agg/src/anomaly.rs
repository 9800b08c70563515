//! Anomaly detection over a window series: the robust z-score of a window's value
//! against the previous windows of the same aggregation and group,
//! `z = 0.6745 · (x − median) / MAD` (Iglewicz and Hoaglin), which one outlier in the
//! history cannot drag the way it drags a mean and standard deviation.

/// Windows needed before a verdict.
pub const MIN_HISTORY: usize = 5;

/// Why a window was flagged, or None.
pub fn robust_z(history: &[f64], x: f64, threshold: f64) -> Option<String> {
    if history.len() < MIN_HISTORY || !x.is_finite() {
        return None;
    }
    let med = median(history.to_vec());
    let mad = median(history.iter().map(|v| (v - med).abs()).collect());
    if mad == 0.0 {
        // A constant baseline: any departure is infinitely many MADs away.
        return (x != med).then(|| {
            format!(
                "{x} differs from the constant {med} of the previous {} windows",
                history.len()
            )
        });
    }
    let z = 0.6745 * (x - med) / mad;
    (z.abs() > threshold).then(|| {
        format!(
            "{x} is {:.1} robust z-scores {} the median {med} of the previous {} windows (MAD {mad}, threshold {threshold})",
            z.abs(),
            if z > 0.0 { "above" } else { "below" },
            history.len()
        )
    })
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_spikes_and_drops_but_not_noise() {
        let h = [100.0, 104.0, 97.0, 101.0, 99.0, 103.0, 96.0, 100.0];
        assert_eq!(robust_z(&h, 102.0, 3.5), None);
        let why = robust_z(&h, 160.0, 3.5).expect("a spike");
        assert!(why.contains("above the median 100"), "{why}");
        assert!(robust_z(&h, 40.0, 3.5).unwrap().contains("below"));
        assert_eq!(robust_z(&h[..4], 1000.0, 3.5), None, "too little history");
        let flat = [5.0; 6];
        assert!(robust_z(&flat, 6.0, 3.5).unwrap().contains("constant"));
        assert_eq!(robust_z(&flat, 5.0, 3.5), None);
        let mut spiky = h.to_vec();
        spiky.push(10_000.0); // one past outlier does not hide the next
        assert!(robust_z(&spiky, 160.0, 3.5).is_some());
    }
}
