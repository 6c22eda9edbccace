//! A minimal JSON writer (the command's output is small and flat; no dependency needed).

use std::fmt;

pub(crate) enum Json {
    Null,
    Num(f64),
    Int(u64),
    Str(String),
    Arr(Vec<Json>),
    Obj(Vec<(String, Json)>),
}

impl Json {
    pub(crate) fn obj() -> Json {
        Json::Obj(Vec::new())
    }
    pub(crate) fn str(s: &str) -> Json {
        Json::Str(s.to_string())
    }
    pub(crate) fn field(mut self, k: &str, v: Json) -> Json {
        if let Json::Obj(fields) = &mut self {
            fields.push((k.to_string(), v));
        }
        self
    }
    pub(crate) fn num(self, k: &str, v: u64) -> Json {
        self.field(k, Json::Int(v))
    }
    pub(crate) fn float(self, k: &str, v: f64) -> Json {
        self.field(k, Json::Num(v))
    }
    pub(crate) fn str_field(self, k: &str, v: &str) -> Json {
        self.field(k, Json::str(v))
    }
    pub(crate) fn arr(self, k: &str, v: Vec<Json>) -> Json {
        self.field(k, Json::Arr(v))
    }
}

fn escape(f: &mut fmt::Formatter<'_>, s: &str) -> fmt::Result {
    f.write_str("\"")?;
    for c in s.chars() {
        match c {
            '"' => f.write_str("\\\"")?,
            '\\' => f.write_str("\\\\")?,
            '\n' => f.write_str("\\n")?,
            '\r' => f.write_str("\\r")?,
            '\t' => f.write_str("\\t")?,
            c if (c as u32) < 0x20 => write!(f, "\\u{:04x}", c as u32)?,
            c => write!(f, "{c}")?,
        }
    }
    f.write_str("\"")
}

impl fmt::Display for Json {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Json::Null => f.write_str("null"),
            Json::Int(n) => write!(f, "{n}"),
            Json::Num(x) if x.is_finite() => write!(f, "{x}"),
            Json::Num(_) => f.write_str("null"),
            Json::Str(s) => escape(f, s),
            Json::Arr(items) => {
                f.write_str("[")?;
                for (i, it) in items.iter().enumerate() {
                    if i > 0 {
                        f.write_str(",")?;
                    }
                    write!(f, "{it}")?;
                }
                f.write_str("]")
            }
            Json::Obj(fields) => {
                f.write_str("{")?;
                for (i, (k, v)) in fields.iter().enumerate() {
                    if i > 0 {
                        f.write_str(",")?;
                    }
                    escape(f, k)?;
                    write!(f, ":{v}")?;
                }
                f.write_str("}")
            }
        }
    }
}
