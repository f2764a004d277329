//! A tiny JSON value that keeps object fields in insertion order.
//!
//! The real CLIs print their fields in a fixed order and we want our lines to read the same way
//! side by side with `shared/captures/`. `serde_json::Value` sorts keys unless the workspace-wide
//! `preserve_order` feature is turned on, and turning it on here would change map ordering for
//! every other crate built in the same workspace, so this crate builds its lines with this type.

use std::borrow::Cow;
use std::fmt::Write as _;

/// One JSON value whose objects remember the order their fields were added in.
#[derive(Debug, Clone)]
pub enum J {
    Null,
    Bool(bool),
    Int(i64),
    Float(f64),
    Str(String),
    Arr(Vec<J>),
    Obj(Vec<(Cow<'static, str>, J)>),
}

impl J {
    /// Serialises the value as one line of compact JSON.
    pub fn to_line(&self) -> String {
        let mut s = String::with_capacity(256);
        self.write(&mut s);
        s
    }

    fn write(&self, out: &mut String) {
        match self {
            J::Null => out.push_str("null"),
            J::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
            J::Int(i) => {
                let _ = write!(out, "{i}");
            }
            J::Float(f) => {
                // serde_json prints floats the shortest way that round-trips, like JavaScript does.
                match serde_json::Number::from_f64(*f) {
                    Some(n) => out.push_str(&n.to_string()),
                    None => out.push_str("null"),
                }
            }
            J::Str(s) => write_str(out, s),
            J::Arr(items) => {
                out.push('[');
                for (i, item) in items.iter().enumerate() {
                    if i > 0 {
                        out.push(',');
                    }
                    item.write(out);
                }
                out.push(']');
            }
            J::Obj(fields) => {
                out.push('{');
                for (i, (k, v)) in fields.iter().enumerate() {
                    if i > 0 {
                        out.push(',');
                    }
                    write_str(out, k);
                    out.push(':');
                    v.write(out);
                }
                out.push('}');
            }
        }
    }

    /// Appends a field to an object; a no-op on other values, which never happens in practice.
    pub fn push(&mut self, key: impl Into<Cow<'static, str>>, value: impl Into<J>) {
        if let J::Obj(fields) = self {
            fields.push((key.into(), value.into()));
        }
    }
}

fn write_str(out: &mut String, s: &str) {
    // serde_json's string escaping is exact and fast, so reuse it instead of re-implementing it.
    match serde_json::to_string(s) {
        Ok(escaped) => out.push_str(&escaped),
        Err(_) => out.push_str("\"\""),
    }
}

impl From<bool> for J {
    fn from(v: bool) -> Self {
        J::Bool(v)
    }
}
impl From<i64> for J {
    fn from(v: i64) -> Self {
        J::Int(v)
    }
}
impl From<i32> for J {
    fn from(v: i32) -> Self {
        J::Int(i64::from(v))
    }
}
impl From<u32> for J {
    fn from(v: u32) -> Self {
        J::Int(i64::from(v))
    }
}
impl From<u64> for J {
    fn from(v: u64) -> Self {
        J::Int(i64::try_from(v).unwrap_or(i64::MAX))
    }
}
impl From<usize> for J {
    fn from(v: usize) -> Self {
        J::Int(i64::try_from(v).unwrap_or(i64::MAX))
    }
}
impl From<f64> for J {
    fn from(v: f64) -> Self {
        J::Float(v)
    }
}
impl From<&str> for J {
    fn from(v: &str) -> Self {
        J::Str(v.to_owned())
    }
}
impl From<String> for J {
    fn from(v: String) -> Self {
        J::Str(v)
    }
}
impl From<&String> for J {
    fn from(v: &String) -> Self {
        J::Str(v.clone())
    }
}
impl<T: Into<J>> From<Option<T>> for J {
    fn from(v: Option<T>) -> Self {
        v.map_or(J::Null, Into::into)
    }
}
impl<T: Into<J>> From<Vec<T>> for J {
    fn from(v: Vec<T>) -> Self {
        J::Arr(v.into_iter().map(Into::into).collect())
    }
}

/// Builds an ordered JSON object: `obj! { "type" => "result", "is_error" => false }`.
#[macro_export]
macro_rules! obj {
    () => { $crate::json::J::Obj(Vec::new()) };
    ($($k:literal => $v:expr),+ $(,)?) => {
        $crate::json::J::Obj(vec![$((::std::borrow::Cow::Borrowed($k), $crate::json::J::from($v))),+])
    };
}

/// Builds a JSON array of strings from string literals.
pub fn strs(items: &[&str]) -> J {
    J::Arr(items.iter().map(|s| J::Str((*s).to_owned())).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_field_order_and_escapes() {
        let v = obj! { "z" => 1, "a" => "q\"uote\n", "n" => J::Null, "f" => 0.5, "arr" => vec![true, false] };
        assert_eq!(
            v.to_line(),
            r#"{"z":1,"a":"q\"uote\n","n":null,"f":0.5,"arr":[true,false]}"#
        );
    }
}
