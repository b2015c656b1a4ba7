//! Text as people read it, in an admin page's table or a terminal's.

/// Cuts text to at most `max` characters, ending a cut one with `…`.
pub fn cut(s: &str, max: usize) -> String {
    if s.chars().count() <= max {
        s.to_owned()
    } else {
        let head: String = s.chars().take(max.saturating_sub(1)).collect();
        format!("{head}…")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cuts_by_characters() {
        assert_eq!(cut("short", 5), "short");
        assert_eq!(cut("éééééé", 4), "ééé…");
        assert_eq!(cut("abc", 0), "…");
    }
}
