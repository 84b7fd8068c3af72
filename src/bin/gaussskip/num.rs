//! Numbers for people: what the commands print.

/// A number with 6 significant digits, without trailing zeros.
pub fn num(x: f64) -> String {
    if x == 0.0 || !x.is_finite() {
        return format!("{x}");
    }
    let exp = x.abs().log10().floor() as i32;
    if (-4..6).contains(&exp) {
        let text = format!("{:.*}", (5 - exp).max(0) as usize, x);
        if text.contains('.') {
            text.trim_end_matches('0').trim_end_matches('.').to_string()
        } else {
            text
        }
    } else {
        let text = format!("{x:.5e}");
        let (mantissa, e) = text.split_once('e').expect("exponent form");
        let mantissa = mantissa.trim_end_matches('0').trim_end_matches('.');
        format!("{mantissa}e{e}")
    }
}
