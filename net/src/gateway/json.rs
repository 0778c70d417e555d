//! The JSON dialect of etcd 3.5's gateway, both ways, driven by the messages' descriptors.
//!
//! etcd's gateway (grpc-gateway v1 with golang/protobuf 1.5's `jsonpb`, `OrigName: true`)
//! reads and writes a dialect of its own, not canonical proto3 JSON:
//! - requests: one JSON value read from the body as Go's `json.Decoder` reads it (what
//!   follows it is ignored); a field by its proto name or its JSON (camel) name, the camel
//!   name winning when both are given, the last of duplicated names winning; unknown fields
//!   ignored; `null` leaves a field unset; 64-bit and 32-bit integers as numbers or quoted
//!   numbers; enums by name or number; bytes as standard base64. Leaves are parsed by Go's
//!   `encoding/json`, so a wrong value is refused with its words ("json: cannot unmarshal
//!   string into Go value of type int64", "invalid character 'a' looking for beginning of
//!   value", "illegal base64 data at input byte 4").
//! - responses: fields under their proto names in declaration order, default values left
//!   out (a oneof member is written when set, even to zero), 64-bit integers as strings, enums by
//!   name, bytes as standard base64, strings escaped as Go escapes them (`<`, `>`, `&`).
//!
//! The codec walks `prost_reflect` descriptors of Basalt's own .proto files
//! ([`basalt_proto::FILE_DESCRIPTOR_SET`]), so it knows every message the services declare
//! without a generated mapper per type.

use base64::Engine as _;
use prost_reflect::{
    DynamicMessage, EnumDescriptor, FieldDescriptor, Kind, MapKey, MessageDescriptor,
    ReflectMessage as _, Value,
};
use std::fmt::Write as _;

/// A JSON value as Go's scanner accepts it, keeping the source text of every value (numbers
/// and quoted numbers are parsed from it, and enum errors quote it).
#[derive(Debug)]
struct Node<'a> {
    raw: &'a [u8],
    kind: NodeKind<'a>,
}

#[derive(Debug)]
enum NodeKind<'a> {
    Null,
    Bool(bool),
    Number,
    String(Vec<u8>),
    Array(Vec<Node<'a>>),
    Object(Vec<(Vec<u8>, Node<'a>)>),
}

impl NodeKind<'_> {
    /// The kind's name in Go's `UnmarshalTypeError`.
    fn go_name(&self) -> &'static str {
        match self {
            NodeKind::Null => "null",
            NodeKind::Bool(_) => "bool",
            NodeKind::Number => "number",
            NodeKind::String(_) => "string",
            NodeKind::Array(_) => "array",
            NodeKind::Object(_) => "object",
        }
    }
}

/// How the end of input is worded: `json.Decoder` reading a stream says "unexpected EOF";
/// `json.Unmarshal` of a whole value says "unexpected end of JSON input" and refuses what
/// follows the value.
#[derive(Clone, Copy, PartialEq)]
enum Mode {
    Stream,
    Whole,
}

/// Arrays and objects nested deeper than this are refused with Go's words for its own limit
/// (10,000 there): the parser recurses, and this keeps it well inside an executor's stack.
/// etcd's messages nest a few levels; only Txn nests itself, and a Txn this deep already has
/// more operations than `--max-txn-ops` allows.
const NESTING_DEPTH_MAX: usize = 512;

struct Parser<'a> {
    src: &'a [u8],
    pos: usize,
    mode: Mode,
    depth: usize,
}

impl<'a> Parser<'a> {
    fn eof(&self) -> String {
        match self.mode {
            Mode::Stream => "unexpected EOF".to_string(),
            Mode::Whole => "unexpected end of JSON input".to_string(),
        }
    }

    fn invalid(&self, c: u8, context: &str) -> String {
        format!("invalid character {} {context}", quote_char(c))
    }

    fn skip_space(&mut self) {
        while let Some(b' ' | b'\t' | b'\n' | b'\r') = self.src.get(self.pos) {
            self.pos += 1;
        }
    }

    /// The next byte after white space, or the end-of-input error.
    fn peek(&mut self) -> Result<u8, String> {
        self.skip_space();
        self.src.get(self.pos).copied().ok_or_else(|| self.eof())
    }

    fn value(&mut self) -> Result<Node<'a>, String> {
        let c = self.peek()?;
        let start = self.pos;
        let kind = match c {
            b'{' => self.object()?,
            b'[' => self.array()?,
            b'"' => NodeKind::String(self.string()?),
            b'-' | b'0'..=b'9' => {
                self.number()?;
                NodeKind::Number
            }
            b't' => {
                self.literal(b"true")?;
                NodeKind::Bool(true)
            }
            b'f' => {
                self.literal(b"false")?;
                NodeKind::Bool(false)
            }
            b'n' => {
                self.literal(b"null")?;
                NodeKind::Null
            }
            c => return Err(self.invalid(c, "looking for beginning of value")),
        };
        Ok(Node {
            raw: &self.src[start..self.pos],
            kind,
        })
    }

    fn nest(&mut self) -> Result<(), String> {
        self.depth += 1;
        if self.depth > NESTING_DEPTH_MAX {
            return Err(self.invalid(self.src[self.pos], "exceeded max depth"));
        }
        Ok(())
    }

    fn object(&mut self) -> Result<NodeKind<'a>, String> {
        self.nest()?;
        self.pos += 1;
        let mut members = Vec::new();
        if self.peek()? == b'}' {
            self.pos += 1;
            self.depth -= 1;
            return Ok(NodeKind::Object(members));
        }
        loop {
            let c = self.peek()?;
            if c != b'"' {
                return Err(self.invalid(c, "looking for beginning of object key string"));
            }
            let key = self.string()?;
            let c = self.peek()?;
            if c != b':' {
                return Err(self.invalid(c, "after object key"));
            }
            self.pos += 1;
            let value = self.value()?;
            members.push((key, value));
            match self.peek()? {
                b',' => self.pos += 1,
                b'}' => {
                    self.pos += 1;
                    self.depth -= 1;
                    return Ok(NodeKind::Object(members));
                }
                c => return Err(self.invalid(c, "after object key:value pair")),
            }
        }
    }

    fn array(&mut self) -> Result<NodeKind<'a>, String> {
        self.nest()?;
        self.pos += 1;
        let mut items = Vec::new();
        if self.peek()? == b']' {
            self.pos += 1;
            self.depth -= 1;
            return Ok(NodeKind::Array(items));
        }
        loop {
            items.push(self.value()?);
            match self.peek()? {
                b',' => self.pos += 1,
                b']' => {
                    self.pos += 1;
                    self.depth -= 1;
                    return Ok(NodeKind::Array(items));
                }
                c => return Err(self.invalid(c, "after array element")),
            }
        }
    }

    fn next_byte(&mut self) -> Result<u8, String> {
        let c = *self.src.get(self.pos).ok_or_else(|| self.eof())?;
        self.pos += 1;
        Ok(c)
    }

    fn literal(&mut self, word: &'static [u8]) -> Result<(), String> {
        self.pos += 1;
        let name = std::str::from_utf8(word).expect("ASCII");
        for &expected in &word[1..] {
            let c = self.next_byte()?;
            if c != expected {
                return Err(self.invalid(
                    c,
                    &format!("in literal {name} (expecting {})", quote_char(expected)),
                ));
            }
        }
        Ok(())
    }

    fn digits(&mut self) {
        while let Some(b'0'..=b'9') = self.src.get(self.pos) {
            self.pos += 1;
        }
    }

    fn number(&mut self) -> Result<(), String> {
        if self.src[self.pos] == b'-' {
            self.pos += 1;
            match self.next_byte()? {
                b'0'..=b'9' => self.pos -= 1,
                c => return Err(self.invalid(c, "in numeric literal")),
            }
        }
        if self.src[self.pos] == b'0' {
            self.pos += 1;
        } else {
            self.digits();
        }
        if self.src.get(self.pos) == Some(&b'.') {
            self.pos += 1;
            match self.next_byte()? {
                b'0'..=b'9' => self.digits(),
                c => return Err(self.invalid(c, "after decimal point in numeric literal")),
            }
        }
        if let Some(b'e' | b'E') = self.src.get(self.pos) {
            self.pos += 1;
            let mut c = self.next_byte()?;
            if c == b'+' || c == b'-' {
                c = self.next_byte()?;
            }
            match c {
                b'0'..=b'9' => self.digits(),
                c => return Err(self.invalid(c, "in exponent of numeric literal")),
            }
        }
        Ok(())
    }

    /// A string literal, unescaped as Go unescapes it (bad UTF-8 and lone surrogates become
    /// U+FFFD).
    fn string(&mut self) -> Result<Vec<u8>, String> {
        self.pos += 1;
        let mut out = Vec::new();
        loop {
            let c = self.next_byte()?;
            match c {
                b'"' => break,
                b'\\' => match self.next_byte()? {
                    b'"' => out.push(b'"'),
                    b'\\' => out.push(b'\\'),
                    b'/' => out.push(b'/'),
                    b'b' => out.push(0x08),
                    b'f' => out.push(0x0c),
                    b'n' => out.push(b'\n'),
                    b'r' => out.push(b'\r'),
                    b't' => out.push(b'\t'),
                    b'u' => {
                        let mut unit = self.hex4()?;
                        let mut ch = None;
                        if (0xd800..0xdc00).contains(&unit)
                            && self.src[self.pos..].starts_with(b"\\u")
                        {
                            self.pos += 2;
                            let low = self.hex4()?;
                            if (0xdc00..0xe000).contains(&low) {
                                let code = 0x10000 + ((unit - 0xd800) << 10) + (low - 0xdc00);
                                ch = char::from_u32(code);
                            } else {
                                push_char(&mut out, char::REPLACEMENT_CHARACTER);
                                unit = low;
                            }
                        }
                        let ch = ch.unwrap_or_else(|| {
                            char::from_u32(unit).unwrap_or(char::REPLACEMENT_CHARACTER)
                        });
                        push_char(&mut out, ch);
                    }
                    c => return Err(self.invalid(c, "in string escape code")),
                },
                c if c < 0x20 => return Err(self.invalid(c, "in string literal")),
                c => out.push(c),
            }
        }
        Ok(String::from_utf8_lossy(&out).into_owned().into_bytes())
    }

    fn hex4(&mut self) -> Result<u32, String> {
        let mut value = 0;
        for _ in 0..4 {
            let c = self.next_byte()?;
            let digit = (c as char)
                .to_digit(16)
                .ok_or_else(|| self.invalid(c, "in \\u hexadecimal character escape"))?;
            value = value * 16 + digit;
        }
        Ok(value)
    }
}

fn push_char(out: &mut Vec<u8>, ch: char) {
    let mut buf = [0u8; 4];
    out.extend_from_slice(ch.encode_utf8(&mut buf).as_bytes());
}

/// Go's `quoteChar`: a byte as the scanner names it in an error.
fn quote_char(c: u8) -> String {
    match c {
        b'\'' => r"'\''".to_string(),
        b'"' => "'\"'".to_string(),
        c => {
            let quoted = go_quote(char::from(c).to_string().as_bytes());
            format!("'{}'", &quoted[1..quoted.len() - 1])
        }
    }
}

/// Go's `strconv.Quote` (`%q`) of bytes, for the few messages that quote input.
fn go_quote(bytes: &[u8]) -> String {
    let mut out = String::from("\"");
    for chunk in bytes.utf8_chunks() {
        for ch in chunk.valid().chars() {
            match ch {
                '"' => out.push_str("\\\""),
                '\\' => out.push_str("\\\\"),
                '\u{7}' => out.push_str("\\a"),
                '\u{8}' => out.push_str("\\b"),
                '\u{c}' => out.push_str("\\f"),
                '\n' => out.push_str("\\n"),
                '\r' => out.push_str("\\r"),
                '\t' => out.push_str("\\t"),
                '\u{b}' => out.push_str("\\v"),
                c if (c as u32) < 0x20 || c as u32 == 0x7f => {
                    let _ = write!(out, "\\x{:02x}", c as u32);
                }
                c if (0x80..=0xa0).contains(&(c as u32)) || c == '\u{ad}' => {
                    let _ = write!(out, "\\u{:04x}", c as u32);
                }
                c => out.push(c),
            }
        }
        for byte in chunk.invalid() {
            let _ = write!(out, "\\x{byte:02x}");
        }
    }
    out.push('"');
    out
}

/// What reading a request body found.
#[derive(Debug)]
pub(crate) enum Decoded {
    /// The body held no value at all: the request is the empty message.
    Empty,
    Message(DynamicMessage),
}

/// Reads the JSON value at the start of `body` (after white space) as a `desc` message; the
/// second value is the number of bytes it took, for a body carrying a stream of requests.
/// `Err` holds Go's words for what was wrong.
pub(crate) fn decode_message(
    desc: &MessageDescriptor,
    body: &[u8],
) -> Result<(Decoded, usize), String> {
    let mut parser = Parser {
        src: body,
        pos: 0,
        mode: Mode::Stream,
        depth: 0,
    };
    parser.skip_space();
    if parser.pos == body.len() {
        return Ok((Decoded::Empty, body.len()));
    }
    let node = parser.value()?;
    let message = message_from(desc, &node)?;
    Ok((Decoded::Message(message), parser.pos))
}

/// `json.Unmarshal` of text that must be one whole value.
fn parse_whole(src: &[u8]) -> Result<Node<'_>, String> {
    let mut parser = Parser {
        src,
        pos: 0,
        mode: Mode::Whole,
        depth: 0,
    };
    let node = parser.value()?;
    parser.skip_space();
    match src.get(parser.pos) {
        None => Ok(node),
        Some(&c) => Err(parser.invalid(c, "after top-level value")),
    }
}

fn type_error(kind: &NodeKind<'_>, go_type: &str) -> String {
    format!(
        "json: cannot unmarshal {} into Go value of type {go_type}",
        kind.go_name()
    )
}

fn message_from(desc: &MessageDescriptor, node: &Node<'_>) -> Result<DynamicMessage, String> {
    let members: &[(Vec<u8>, Node<'_>)] = match &node.kind {
        NodeKind::Object(members) => members,
        NodeKind::Null => &[],
        kind => return Err(type_error(kind, "map[string]json.RawMessage")),
    };
    // A Go map: the last of duplicated names wins.
    let find = |name: &str| {
        members
            .iter()
            .rev()
            .find(|(key, _)| key == name.as_bytes())
            .map(|(_, value)| value)
    };
    let mut message = DynamicMessage::new(desc.clone());
    // Each field by its proto name, then its JSON name, which wins when both are given.
    for field in desc.fields() {
        let Some(value) = find(field.json_name()).or_else(|| find(field.name())) else {
            continue;
        };
        if let Some(value) = field_value(&field, value)? {
            message.set_field(&field, value);
        }
    }
    Ok(message)
}

/// The value of one field, or `None` for a `null` that leaves it unset.
fn field_value(field: &FieldDescriptor, node: &Node<'_>) -> Result<Option<Value>, String> {
    let kind = field.kind();
    if field.is_list() {
        return match &node.kind {
            NodeKind::Null => Ok(None),
            NodeKind::Array(items) => {
                let mut values = Vec::with_capacity(items.len());
                for item in items {
                    values.push(
                        single_value(&kind, item)?.unwrap_or_else(|| Value::default_value(&kind)),
                    );
                }
                Ok(Some(Value::List(values)))
            }
            other => Err(type_error(other, "[]json.RawMessage")),
        };
    }
    single_value(&kind, node)
}

fn enum_by_name(desc: &EnumDescriptor, raw: &[u8]) -> Result<i32, String> {
    let name = &raw[1..raw.len() - 1];
    std::str::from_utf8(name)
        .ok()
        .and_then(|name| desc.get_value_by_name(name))
        .map(|value| value.number())
        .ok_or_else(|| {
            format!(
                "unknown value {} for enum {}",
                go_quote(raw),
                desc.full_name()
            )
        })
}

fn single_value(kind: &Kind, node: &Node<'_>) -> Result<Option<Value>, String> {
    match kind {
        Kind::Message(desc) => match node.kind {
            NodeKind::Null => Ok(None),
            _ => Ok(Some(Value::Message(message_from(desc, node)?))),
        },
        Kind::Enum(desc) => {
            if let NodeKind::String(_) = node.kind {
                return enum_by_name(desc, node.raw).map(|n| Some(Value::EnumNumber(n)));
            }
            // jsonpb hands an enum's number to `json.Unmarshal` as this Go type.
            let number = go_integer(node, i64::from(i32::MIN), i64::from(i32::MAX), || {
                "protoreflect.EnumNumber".to_string()
            })?;
            Ok(number.map(|n| Value::EnumNumber(n as i32)))
        }
        Kind::Int64 | Kind::Sint64 | Kind::Sfixed64 => {
            Ok(quoted_integer(node, i64::MIN, i64::MAX, "int64")?.map(Value::I64))
        }
        Kind::Int32 | Kind::Sint32 | Kind::Sfixed32 => {
            Ok(
                quoted_integer(node, i64::from(i32::MIN), i64::from(i32::MAX), "int32")?
                    .map(|n| Value::I32(n as i32)),
            )
        }
        Kind::Uint32 | Kind::Fixed32 => {
            Ok(quoted_integer(node, 0, i64::from(u32::MAX), "uint32")?
                .map(|n| Value::U32(n as u32)))
        }
        Kind::Uint64 | Kind::Fixed64 => quoted_u64(node),
        Kind::Bool => match node.kind {
            NodeKind::Null => Ok(None),
            NodeKind::Bool(b) => Ok(Some(Value::Bool(b))),
            ref other => Err(type_error(other, "bool")),
        },
        Kind::String => match &node.kind {
            NodeKind::Null => Ok(None),
            NodeKind::String(s) => Ok(Some(Value::String(String::from_utf8_lossy(s).into_owned()))),
            other => Err(type_error(other, "string")),
        },
        Kind::Bytes => match &node.kind {
            NodeKind::Null => Ok(None),
            NodeKind::String(s) => Ok(Some(Value::Bytes(go_base64_decode(s)?.into()))),
            // Go reads a []byte from an array of numbers too, one byte each.
            NodeKind::Array(items) => {
                let mut bytes = Vec::with_capacity(items.len());
                for item in items {
                    let byte = go_integer(item, 0, 255, || "uint8".to_string())?;
                    bytes.push(byte.unwrap_or(0) as u8);
                }
                Ok(Some(Value::Bytes(bytes.into())))
            }
            other => Err(type_error(other, "[]uint8")),
        },
        Kind::Float | Kind::Double => Err("floating point fields are not in etcd's API".into()),
    }
}

/// jsonpb drops the quotes of a quoted number and hands the rest to `json.Unmarshal`.
fn unquoted<'a>(node: &'a Node<'a>) -> Result<Option<Node<'a>>, String> {
    match node.kind {
        NodeKind::String(_) => parse_whole(&node.raw[1..node.raw.len() - 1]).map(Some),
        _ => Ok(None),
    }
}

fn quoted_integer(
    node: &Node<'_>,
    min: i64,
    max: i64,
    go_type: &str,
) -> Result<Option<i64>, String> {
    match unquoted(node)? {
        Some(inner) => go_integer(&inner, min, max, || go_type.to_string()),
        None => go_integer(node, min, max, || go_type.to_string()),
    }
}

fn quoted_u64(node: &Node<'_>) -> Result<Option<Value>, String> {
    let parse = |node: &Node<'_>| match node.kind {
        NodeKind::Null => Ok(None),
        NodeKind::Number => std::str::from_utf8(node.raw)
            .ok()
            .and_then(|text| text.parse::<u64>().ok())
            .map(|n| Some(Value::U64(n)))
            .ok_or_else(|| number_error(node, "uint64")),
        ref other => Err(type_error(other, "uint64")),
    };
    match unquoted(node)? {
        Some(inner) => parse(&inner),
        None => parse(node),
    }
}

fn number_error(node: &Node<'_>, go_type: &str) -> String {
    format!(
        "json: cannot unmarshal number {} into Go value of type {go_type}",
        String::from_utf8_lossy(node.raw)
    )
}

/// Go's `encoding/json` storing a value into a signed integer of the given range.
fn go_integer(
    node: &Node<'_>,
    min: i64,
    max: i64,
    go_type: impl Fn() -> String,
) -> Result<Option<i64>, String> {
    match node.kind {
        NodeKind::Null => Ok(None),
        NodeKind::Number => std::str::from_utf8(node.raw)
            .ok()
            .and_then(|text| text.parse::<i64>().ok())
            .filter(|n| (min..=max).contains(n))
            .map(Some)
            .ok_or_else(|| number_error(node, &go_type())),
        ref other => Err(type_error(other, &go_type())),
    }
}

/// Go's `base64.StdEncoding.Decode`, with its error offsets: padding required, CR and LF
/// skipped, the offset of an incomplete final quantum being where that quantum starts.
fn go_base64_decode(src: &[u8]) -> Result<Vec<u8>, String> {
    let corrupt = |at: usize| format!("illegal base64 data at input byte {at}");
    let sextet = |c: u8| match c {
        b'A'..=b'Z' => Some(c - b'A'),
        b'a'..=b'z' => Some(c - b'a' + 26),
        b'0'..=b'9' => Some(c - b'0' + 52),
        b'+' => Some(62),
        b'/' => Some(63),
        _ => None,
    };
    let mut out = Vec::with_capacity(src.len() / 4 * 3);
    let mut si = 0;
    loop {
        let mut quantum = [0u8; 4];
        let mut filled = 0;
        let mut ended = false;
        while filled < 4 {
            if si == src.len() {
                if filled == 0 {
                    return Ok(out);
                }
                return Err(corrupt(si - filled));
            }
            let c = src[si];
            si += 1;
            if let Some(bits) = sextet(c) {
                quantum[filled] = bits;
                filled += 1;
                continue;
            }
            if c == b'\n' || c == b'\r' {
                continue;
            }
            if c != b'=' || filled < 2 {
                return Err(corrupt(si - 1));
            }
            if filled == 2 {
                while si < src.len() && (src[si] == b'\n' || src[si] == b'\r') {
                    si += 1;
                }
                if si == src.len() {
                    return Err(corrupt(src.len()));
                }
                if src[si] != b'=' {
                    return Err(corrupt(si - 1));
                }
                si += 1;
            }
            while si < src.len() && (src[si] == b'\n' || src[si] == b'\r') {
                si += 1;
            }
            if si < src.len() {
                return Err(corrupt(si));
            }
            ended = true;
            break;
        }
        let bits = (u32::from(quantum[0]) << 18)
            | (u32::from(quantum[1]) << 12)
            | (u32::from(quantum[2]) << 6)
            | u32::from(quantum[3]);
        let bytes = bits.to_be_bytes();
        out.extend_from_slice(&bytes[1..filled]);
        if ended {
            return Ok(out);
        }
    }
}

/// Writes `message` as etcd's gateway writes it.
pub(crate) fn encode_message(out: &mut String, message: &DynamicMessage) {
    out.push('{');
    let mut first = true;
    for field in message.descriptor().fields() {
        if !message.has_field(&field) {
            continue;
        }
        let value = message.get_field(&field);
        if let Value::List(items) = &*value {
            if items.is_empty() {
                continue;
            }
        }
        if !first {
            out.push(',');
        }
        first = false;
        encode_string(out, field.name());
        out.push(':');
        encode_value(out, &field.kind(), &value);
    }
    out.push('}');
}

fn encode_value(out: &mut String, kind: &Kind, value: &Value) {
    match value {
        Value::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
        Value::I32(n) => {
            let _ = write!(out, "{n}");
        }
        Value::U32(n) => {
            let _ = write!(out, "{n}");
        }
        Value::I64(n) => {
            let _ = write!(out, "\"{n}\"");
        }
        Value::U64(n) => {
            let _ = write!(out, "\"{n}\"");
        }
        Value::F32(n) => {
            let _ = write!(out, "{n}");
        }
        Value::F64(n) => {
            let _ = write!(out, "{n}");
        }
        Value::String(s) => encode_string(out, s),
        Value::Bytes(b) => {
            out.push('"');
            out.push_str(&base64::engine::general_purpose::STANDARD.encode(b));
            out.push('"');
        }
        Value::EnumNumber(n) => match kind {
            Kind::Enum(desc) => match desc.get_value(*n) {
                Some(value) => encode_string(out, value.name()),
                None => {
                    let _ = write!(out, "{n}");
                }
            },
            _ => {
                let _ = write!(out, "{n}");
            }
        },
        Value::Message(message) => encode_message(out, message),
        Value::List(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                encode_value(out, kind, item);
            }
            out.push(']');
        }
        Value::Map(entries) => {
            // No etcd message has a map field; written as jsonpb would, for completeness of
            // the match.
            out.push('{');
            for (i, (key, value)) in entries.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                let key = match key {
                    MapKey::String(s) => s.clone(),
                    MapKey::Bool(b) => b.to_string(),
                    MapKey::I32(n) => n.to_string(),
                    MapKey::I64(n) => n.to_string(),
                    MapKey::U32(n) => n.to_string(),
                    MapKey::U64(n) => n.to_string(),
                };
                encode_string(out, &key);
                out.push(':');
                encode_value(out, kind, value);
            }
            out.push('}');
        }
    }
}

/// A string as Go's `encoding/json` writes it (HTML-safe escapes included).
pub(crate) fn encode_string(out: &mut String, s: &str) {
    out.push('"');
    for ch in s.chars() {
        match ch {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '<' | '>' | '&' | '\u{2028}' | '\u{2029}' => {
                let _ = write!(out, "\\u{:04x}", ch as u32);
            }
            c if (c as u32) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

#[cfg(test)]
mod tests {
    use super::*;
    use prost_reflect::DescriptorPool;

    fn pool() -> DescriptorPool {
        DescriptorPool::decode(basalt_proto::FILE_DESCRIPTOR_SET).unwrap()
    }

    fn decode(message: &str, body: &str) -> Result<String, String> {
        let desc = pool().get_message_by_name(message).unwrap();
        let (decoded, _) = decode_message(&desc, body.as_bytes())?;
        let mut out = String::new();
        match decoded {
            Decoded::Empty => out.push_str("<empty>"),
            Decoded::Message(message) => encode_message(&mut out, &message),
        }
        Ok(out)
    }

    /// Every case here was answered by etcd 3.5.1's gateway with these words.
    #[test]
    fn requests_are_refused_with_gos_words() {
        let range = "etcdserverpb.RangeRequest";
        let cases = [
            (r#"{"key":"#, "unexpected EOF"),
            (
                r#"{"key":5}"#,
                "json: cannot unmarshal number into Go value of type []uint8",
            ),
            (
                r#"{"limit":"abc"}"#,
                "invalid character 'a' looking for beginning of value",
            ),
            (
                r#"{"sort_order":"NOPE"}"#,
                r#"unknown value "\"NOPE\"" for enum etcdserverpb.RangeRequest.SortOrder"#,
            ),
            (
                "[]",
                "json: cannot unmarshal array into Go value of type map[string]json.RawMessage",
            ),
            (
                r#""str""#,
                "json: cannot unmarshal string into Go value of type map[string]json.RawMessage",
            ),
            (
                r#"{"limit":5.5}"#,
                "json: cannot unmarshal number 5.5 into Go value of type int64",
            ),
            (
                r#"{"limit":true}"#,
                "json: cannot unmarshal bool into Go value of type int64",
            ),
            (
                r#"{"keys_only":"true"}"#,
                "json: cannot unmarshal string into Go value of type bool",
            ),
            (
                r#"{"keys_only":1}"#,
                "json: cannot unmarshal number into Go value of type bool",
            ),
            (
                r#"{"limit":"99999999999999999999"}"#,
                "json: cannot unmarshal number 99999999999999999999 into Go value of type int64",
            ),
            (
                r#"{"revision":{}}"#,
                "json: cannot unmarshal object into Go value of type int64",
            ),
            (
                r#"{"max_create_revision":"1e3"}"#,
                "json: cannot unmarshal number 1e3 into Go value of type int64",
            ),
            (
                r#"{"sort_order":1e3}"#,
                "json: cannot unmarshal number 1e3 into Go value of type protoreflect.EnumNumber",
            ),
            (
                r#"{"key":[1,256]}"#,
                "json: cannot unmarshal number 256 into Go value of type uint8",
            ),
            (r#"{"key":"!!!"}"#, "illegal base64 data at input byte 0"),
            (r#"{"key":"Zm9"}"#, "illegal base64 data at input byte 0"),
            (r#"{"key":"Zm9vY"}"#, "illegal base64 data at input byte 4"),
            (r#"{"key" 1}"#, "invalid character '1' after object key"),
            (
                r#"{"key":"Zm9v" "x"}"#,
                "invalid character '\"' after object key:value pair",
            ),
            (
                r#"{"key":tru}"#,
                "invalid character '}' in literal true (expecting 'e')",
            ),
        ];
        for (body, message) in cases {
            assert_eq!(decode(range, body), Err(message.to_string()), "{body}");
        }
        assert_eq!(
            decode(range, &"[".repeat(100_000)),
            Err("invalid character '[' exceeded max depth".to_string())
        );
    }

    #[test]
    fn requests_read_as_jsonpb_reads_them() {
        let range = "etcdserverpb.RangeRequest";
        let cases = [
            ("", "<empty>"),
            ("  \n", "<empty>"),
            ("null", "{}"),
            (r#"{"key":[102,111,111]}"#, r#"{"key":"Zm9v"}"#),
            (r#"{"key":"Zm9v","bogus":1}"#, r#"{"key":"Zm9v"}"#),
            (r#"{"key":"Zm9v"} trailing"#, r#"{"key":"Zm9v"}"#),
            (r#"{"key":"Zm9v","key":"YmFy"}"#, r#"{"key":"YmFy"}"#),
            (r#"{"key":null,"limit":"-1"}"#, r#"{"limit":"-1"}"#),
            (
                r#"{"key":"Zm9v","limit":5,"sortOrder":"DESCEND","count_only":true}"#,
                r#"{"key":"Zm9v","limit":"5","sort_order":"DESCEND","count_only":true}"#,
            ),
            (
                r#"{"key":"Zm9v","sort_order":99}"#,
                r#"{"key":"Zm9v","sort_order":99}"#,
            ),
            (
                r#"{"keys_only":false,"sort_target":1}"#,
                r#"{"sort_target":"VERSION"}"#,
            ),
        ];
        for (body, json) in cases {
            assert_eq!(decode(range, body), Ok(json.to_string()), "{body}");
        }
        assert_eq!(
            decode(
                "etcdserverpb.TxnRequest",
                r#"{"compare":[{"target":"MOD","key":"Zm9v","mod_revision":"0","result":"LESS"}],
                    "failure":[{"request_delete_range":{"key":"eA=="}}],"success":null}"#
            ),
            Ok(r#"{"compare":[{"result":"LESS","target":"MOD","key":"Zm9v","mod_revision":"0"}],"failure":[{"request_delete_range":{"key":"eA=="}}]}"#.to_string())
        );
        assert_eq!(
            decode("etcdserverpb.LeaseGrantRequest", r#"{"TTL":"30","ID":7}"#),
            Ok(r#"{"TTL":"30","ID":"7"}"#.to_string())
        );
    }

    #[test]
    fn strings_are_escaped_as_go_escapes_them() {
        let mut out = String::new();
        encode_string(&mut out, "a<b>&\"\\\n\u{1}é\u{2028}");
        assert_eq!(out, r#""a\u003cb\u003e\u0026\"\\\n\u0001é\u2028""#);
    }

    #[test]
    fn base64_decodes_as_go_decodes() {
        assert_eq!(go_base64_decode(b"Zm9v").unwrap(), b"foo");
        assert_eq!(go_base64_decode(b"Zm8=").unwrap(), b"fo");
        assert_eq!(go_base64_decode(b"Zg==").unwrap(), b"f");
        assert_eq!(go_base64_decode(b"Zm\n9v").unwrap(), b"foo");
        assert_eq!(go_base64_decode(b"").unwrap(), b"");
        for (input, at) in [
            (&b"Zg="[..], 3),
            (b"Zg==x", 4),
            (b"Z===", 1),
            (b"Zm9vZ", 4),
            (b"Zm9v!", 4),
        ] {
            assert_eq!(
                go_base64_decode(input),
                Err(format!("illegal base64 data at input byte {at}")),
                "{input:?}"
            );
        }
    }
}
