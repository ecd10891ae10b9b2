//! The program's two commands.

pub(crate) mod demo;
pub(crate) mod serve;

/// The value of an option given as `--name VALUE` or `--name=VALUE`.
///
/// `arg` is the current argument, `rest` yields the following ones.
pub(crate) fn option_value(
    name: &str,
    arg: &str,
    rest: &mut std::slice::Iter<'_, String>,
) -> Result<Option<String>, String> {
    if arg == name {
        return match rest.next() {
            Some(v) => Ok(Some(v.clone())),
            None => Err(format!("{name} needs a value")),
        };
    }
    Ok(arg
        .strip_prefix(name)
        .and_then(|r| r.strip_prefix('='))
        .map(str::to_owned))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn option_forms() {
        let args = ["x".to_owned()];
        let mut it = args.iter();
        assert_eq!(option_value("--a", "--a", &mut it), Ok(Some("x".into())));
        assert_eq!(
            option_value("--a", "--a", &mut it),
            Err("--a needs a value".into())
        );
        assert_eq!(option_value("--a", "--a=y", &mut it), Ok(Some("y".into())));
        assert_eq!(option_value("--a", "--ab", &mut it), Ok(None));
        assert_eq!(option_value("--a", "--b", &mut it), Ok(None));
    }
}
