//! Test tones and their detection: a sine generator and Goertzel analysis.
//!
//! End-to-end tests prove that audio crossed the gateway by sending a tone one way and
//! checking what arrives: that it is mostly that tone ([`tone_purity`]) and at the right
//! pitch ([`dominant_frequency`]). G.711 quantisation noise and law-to-law transcoding keep
//! a clean tone well above 0.9 purity; noise, silence or garbled frames do not.

use std::f64::consts::TAU;

/// The full-scale amplitude the normalisations below refer to.
const FULL_SCALE: f64 = i16::MAX as f64;

/// A sine of `freq_hz` at `amplitude` (0..=1 of full scale, clamped), starting at phase 0.
pub fn sine(freq_hz: f64, amplitude: f64, samples: usize, rate: u32) -> Vec<i16> {
    let peak = amplitude.clamp(0.0, 1.0) * FULL_SCALE;
    let step = TAU * freq_hz / f64::from(rate);
    (0..samples)
        .map(|n| {
            // In range by the clamp above; `as` saturates anyway.
            (peak * (step * n as f64).sin()).round() as i16
        })
        .collect()
}

/// The power of `freq_hz` in `samples` by the Goertzel algorithm, normalised so that a
/// full-scale sine at that frequency gives ≈ 1.0 and one at amplitude `a` gives ≈ `a²`.
///
/// Exact when the window holds a whole number of cycles; otherwise spectral leakage lowers
/// the value somewhat (rectangular window). 0.0 for no samples.
pub fn goertzel(samples: &[i16], freq_hz: f64, rate: u32) -> f64 {
    if samples.is_empty() {
        return 0.0;
    }
    let half_n = samples.len() as f64 / 2.0;
    goertzel_raw(samples, freq_hz, rate) / (half_n * FULL_SCALE).powi(2)
}

/// The fraction (0..=1) of the signal's energy that lies at `freq_hz` ± one DFT bin
/// (`rate / samples.len()` Hz): 1.0 for a pure tone, near 0 for noise or another tone.
///
/// The three components are orthogonal over the window, so their energies add up without
/// double counting. Analyse a window of a few hundred milliseconds of steady tone: a longer
/// one narrows the bins, and a phase jump (a lost or repeated frame) then spreads energy out
/// of them. 0.0 for silence.
pub fn tone_purity(samples: &[i16], freq_hz: f64, rate: u32) -> f64 {
    let total: f64 = samples.iter().map(|&s| f64::from(s).powi(2)).sum();
    if total == 0.0 {
        return 0.0;
    }
    let n = samples.len() as f64;
    let bin = f64::from(rate) / n;
    // A real sinusoid's energy is 2|X(f)|²/N (its negative-frequency image holds the rest).
    let at = [freq_hz - bin, freq_hz, freq_hz + bin]
        .iter()
        .filter(|f| **f > 0.0 && **f < f64::from(rate) / 2.0)
        .map(|&f| 2.0 * goertzel_raw(samples, f, rate) / n)
        .sum::<f64>();
    (at / total).clamp(0.0, 1.0)
}

/// The strongest frequency among 100 Hz..=3400 Hz (the telephone band) in 10 Hz steps.
/// Coarse, for test messages ("expected 1000 Hz, got 440 Hz"); 0.0 for silence.
pub fn dominant_frequency(samples: &[i16], rate: u32) -> f64 {
    let mut best = (0.0, 0.0);
    for step in 10..=340 {
        let freq = f64::from(step * 10);
        let power = goertzel_raw(samples, freq, rate);
        if power > best.1 {
            best = (freq, power);
        }
    }
    best.0
}

/// The RMS level relative to full scale (a full-scale sine gives ≈ 0.707).
pub fn rms(samples: &[i16]) -> f64 {
    if samples.is_empty() {
        return 0.0;
    }
    let energy: f64 = samples.iter().map(|&s| f64::from(s).powi(2)).sum();
    (energy / samples.len() as f64).sqrt() / FULL_SCALE
}

/// |X(f)|², the squared magnitude of the DFT of `samples` at `freq_hz`.
fn goertzel_raw(samples: &[i16], freq_hz: f64, rate: u32) -> f64 {
    let coeff = 2.0 * (TAU * freq_hz / f64::from(rate)).cos();
    let (mut s1, mut s2) = (0.0f64, 0.0f64);
    for &x in samples {
        let s0 = f64::from(x) + coeff * s1 - s2;
        s2 = s1;
        s1 = s0;
    }
    (s1 * s1 + s2 * s2 - coeff * s1 * s2).max(0.0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::g711::{self, Law};

    /// A deterministic white-ish noise (xorshift), at about a third of full scale.
    fn noise(samples: usize) -> Vec<i16> {
        let mut x = 0x2545_F491_4F6C_DD1Du64;
        (0..samples)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                (x >> 48) as i16 / 3
            })
            .collect()
    }

    #[test]
    fn sine_has_the_asked_amplitude_and_frequency() {
        let s = sine(1000.0, 1.0, 8000, 8000);
        assert_eq!(s.iter().copied().max(), Some(i16::MAX));
        assert!((rms(&s) - std::f64::consts::FRAC_1_SQRT_2).abs() < 0.001);
        assert!((goertzel(&s, 1000.0, 8000) - 1.0).abs() < 0.01);
        let half = sine(1000.0, 0.5, 8000, 8000);
        assert!((goertzel(&half, 1000.0, 8000) - 0.25).abs() < 0.01);
        assert!(goertzel(&s, 2000.0, 8000) < 1e-6);
        assert_eq!(goertzel(&[], 1000.0, 8000), 0.0);
        assert_eq!(
            sine(1000.0, 2.0, 8, 8000).iter().copied().max(),
            Some(i16::MAX)
        );
    }

    #[test]
    fn a_tone_survives_pcmu_coding() {
        let tone = sine(1000.0, 0.5, 4000, 8000);
        let mut codes = Vec::new();
        g711::encode_frame(Law::Pcmu, &tone, &mut codes);
        let mut back = Vec::new();
        g711::decode_frame(Law::Pcmu, &codes, &mut back);
        let purity = tone_purity(&back, 1000.0, 8000);
        assert!(purity > 0.9, "purity {purity}");
        assert_eq!(dominant_frequency(&back, 8000), 1000.0);
    }

    #[test]
    fn a_tone_survives_pcma_to_pcmu_transcoding() {
        let tone = sine(1000.0, 0.3, 4000, 8000);
        let mut alaw = Vec::new();
        g711::encode_frame(Law::Pcma, &tone, &mut alaw);
        let mut ulaw = Vec::new();
        g711::transcode(Law::Pcma, Law::Pcmu, &alaw, &mut ulaw);
        let mut back = Vec::new();
        g711::decode_frame(Law::Pcmu, &ulaw, &mut back);
        let purity = tone_purity(&back, 1000.0, 8000);
        assert!(purity > 0.9, "purity {purity}");
        // A quiet tone too: the quantisation noise is relatively larger.
        let quiet = sine(1000.0, 0.01, 4000, 8000);
        let mut codes = Vec::new();
        g711::encode_frame(Law::Pcma, &quiet, &mut codes);
        let mut back = Vec::new();
        g711::decode_frame(Law::Pcma, &codes, &mut back);
        assert!(tone_purity(&back, 1000.0, 8000) > 0.9);
    }

    #[test]
    fn noise_and_other_tones_are_not_pure() {
        let n = noise(4000);
        let purity = tone_purity(&n, 1000.0, 8000);
        assert!(purity < 0.05, "noise purity {purity}");
        let other = sine(440.0, 0.5, 4000, 8000);
        assert!(tone_purity(&other, 1000.0, 8000) < 0.01);
        assert_eq!(dominant_frequency(&other, 8000), 440.0);
        assert_eq!(tone_purity(&[0; 160], 1000.0, 8000), 0.0);
        assert_eq!(dominant_frequency(&[0; 160], 8000), 0.0);
        // A mix is partly pure.
        let mix: Vec<i16> = sine(1000.0, 0.3, 4000, 8000)
            .iter()
            .zip(sine(1700.0, 0.3, 4000, 8000))
            .map(|(a, b)| a + b)
            .collect();
        let purity = tone_purity(&mix, 1000.0, 8000);
        assert!((purity - 0.5).abs() < 0.02, "mix purity {purity}");
    }
}
