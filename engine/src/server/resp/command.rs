//! The RESP commands credshard answers, and how each maps onto the native protocol.
//!
//! A command becomes a [`Plan`]: answered here at once ([`Local`]), or one or more native
//! requests that the connection sends through the same dispatch as the native protocol (so
//! the same shards, ACLs, audit log and encryption serve both) with a [`Shape`] that turns
//! their native replies into the command's RESP reply.

use std::ops::Range;

use bytes::BytesMut;
use credshard_protocol::frame;
use credshard_protocol::op::batch_get::BATCH_IDS_MAX;
use credshard_protocol::op::get::{GetMetaRequest, GetRequest};
use credshard_protocol::op::hello::{HelloRequest, PROTOCOL_VERSION};
use credshard_protocol::op::labels::{encode_labels, Labels, EMPTY_LABELS};
use credshard_protocol::op::list::{ListRequest, LIST_PAGE_MAX};
use credshard_protocol::op::metadata::MetadataRef;
use credshard_protocol::op::put::{Expiry, PutRequest, TTL_MS_MAX};
use credshard_protocol::op::rotate::RotateRequest;
use credshard_protocol::op::Request;
use credshard_protocol::wire::Reader;
use credshard_protocol::{Kind, Op, Status, VersionState};

use crate::auth::Principal;
use crate::config::FsyncMode;
use crate::server::executor::ExecutorContext;
use crate::server::resp::reply::{Protocol, Reply};

/// A command's name, arity and key positions, as `COMMAND` reports them. A negative arity
/// means "at least that many" (arguments count the name).
pub struct Spec {
    pub name: &'static str,
    pub arity: i64,
    pub flags: &'static [&'static str],
    pub first_key: i64,
    pub last_key: i64,
    pub step: i64,
    /// The native op the command uses, for the audit entry of a refused request.
    pub op: Op,
}

const fn spec(
    name: &'static str,
    arity: i64,
    flags: &'static [&'static str],
    keys: (i64, i64, i64),
    op: Op,
) -> Spec {
    Spec { name, arity, flags, first_key: keys.0, last_key: keys.1, step: keys.2, op }
}

const READ: &[&str] = &["readonly", "fast"];
const WRITE: &[&str] = &["write", "denyoom"];
const CONNECTION: &[&str] = &["noauth", "fast", "loading", "stale"];
const SERVER: &[&str] = &["loading", "stale"];
const ONE_KEY: (i64, i64, i64) = (1, 1, 1);
const ALL_KEYS: (i64, i64, i64) = (1, -1, 1);
const NO_KEYS: (i64, i64, i64) = (0, 0, 0);

/// Every command, in the order `COMMAND` lists them.
pub const COMMANDS: &[Spec] = &[
    spec("get", 2, READ, ONE_KEY, Op::Get),
    spec("set", -3, WRITE, ONE_KEY, Op::Put),
    spec("del", -2, &["write"], ALL_KEYS, Op::Delete),
    spec("exists", -2, READ, ALL_KEYS, Op::GetMeta),
    spec("mget", -2, READ, ALL_KEYS, Op::BatchGet),
    spec("ttl", 2, READ, ONE_KEY, Op::GetMeta),
    spec("pttl", 2, READ, ONE_KEY, Op::GetMeta),
    spec("ping", -1, &["fast", "stale"], NO_KEYS, Op::Ping),
    spec("echo", 2, &["fast"], NO_KEYS, Op::Ping),
    spec("hello", -1, CONNECTION, NO_KEYS, Op::Hello),
    spec("auth", -2, CONNECTION, NO_KEYS, Op::Hello),
    spec("quit", -1, CONNECTION, NO_KEYS, Op::Ping),
    spec("select", 2, &["fast", "loading", "stale"], NO_KEYS, Op::Ping),
    spec("client", -2, SERVER, NO_KEYS, Op::Ping),
    spec("command", -1, SERVER, NO_KEYS, Op::Ping),
    spec("config", -2, &["admin", "loading", "stale"], NO_KEYS, Op::Ping),
    spec("info", -1, &["loading", "stale"], NO_KEYS, Op::Stats),
    spec("credshard.put", -5, WRITE, ONE_KEY, Op::Put),
    spec("credshard.get", -2, READ, ONE_KEY, Op::Get),
    spec("credshard.meta", 2, READ, ONE_KEY, Op::GetMeta),
    spec("credshard.rotate", -3, WRITE, ONE_KEY, Op::Rotate),
    spec("credshard.delete", -2, &["write"], ONE_KEY, Op::Delete),
    spec("credshard.list", -1, &["readonly"], NO_KEYS, Op::List),
    spec("credshard.stats", 1, &["admin"], NO_KEYS, Op::Stats),
];

impl Spec {
    /// Whether the command writes (its requests are committed before they are answered).
    pub fn writes(&self) -> bool {
        self.flags.contains(&"write")
    }
}

/// The spec of a command named `name` (any case).
pub fn find(name: &[u8]) -> Option<&'static Spec> {
    COMMANDS.iter().find(|spec| spec.name.as_bytes().eq_ignore_ascii_case(name))
}

/// Commands a connection may send before it authenticates.
pub fn allowed_before_auth(spec: &Spec) -> bool {
    matches!(spec.name, "auth" | "hello" | "quit")
}

/// The scope of a credential that SET creates from a key without a `:`.
const SET_SCOPE_DEFAULT: &str = "default";

/// A command's arguments: ranges of the input it was parsed from.
#[derive(Clone, Copy)]
pub struct Args<'a> {
    pub input: &'a [u8],
    pub ranges: &'a [Range<usize>],
}

impl<'a> Args<'a> {
    pub fn len(&self) -> usize {
        self.ranges.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ranges.is_empty()
    }

    pub fn get(&self, index: usize) -> &'a [u8] {
        &self.input[self.ranges[index].clone()]
    }

    fn iter(&self) -> impl Iterator<Item = &'a [u8]> + 'a {
        let input = self.input;
        self.ranges.iter().map(move |range| &input[range.clone()])
    }

    fn str(&self, index: usize) -> Result<&'a str, Local<'a>> {
        std::str::from_utf8(self.get(index))
            .map_err(|_| Local::error("ERR", "credential ids, owners, scopes and labels must be UTF-8"))
    }

    fn number(&self, index: usize) -> Result<i64, Local<'a>> {
        std::str::from_utf8(self.get(index))
            .ok()
            .and_then(|text| text.parse().ok())
            .ok_or_else(|| Local::error("ERR", "value is not an integer or out of range"))
    }

    /// Whether argument `index` is `word`, in any case.
    fn is(&self, index: usize, word: &str) -> bool {
        self.get(index).eq_ignore_ascii_case(word.as_bytes())
    }
}

/// A reply made without the native protocol.
pub enum Local<'a> {
    Error { code: &'static str, message: String },
    Ok,
    Null,
    Quit,
    Echo(&'a [u8]),
    ClientGetName,
    ClientSetName(&'a [u8]),
    Command(Args<'a>),
    ConfigGet(Args<'a>),
}

impl Local<'_> {
    pub fn error(code: &'static str, message: impl Into<String>) -> Local<'static> {
        Local::Error { code, message: message.into() }
    }

    fn syntax() -> Local<'static> {
        Local::error("ERR", "syntax error")
    }
}

/// How the native replies of a command become its RESP reply.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Shape {
    /// `+OK` (AUTH).
    Ok,
    /// SET: `+OK`, or a null when NX or XX found the credential otherwise.
    Set {
        null_on_conflict: bool,
    },
    /// GET: the secret, or a null when there is none.
    Bulk,
    /// DEL and EXISTS: how many of the native requests succeeded.
    Count,
    /// TTL and PTTL.
    Ttl {
        millis: bool,
    },
    /// MGET.
    Mget,
    /// PING and ECHO: `+PONG`, or the argument as a bulk string.
    Pong {
        echo: bool,
    },
    /// HELLO: switch to `protocol` (if it names one) and describe the server.
    Hello {
        protocol: Option<Protocol>,
        authenticating: bool,
        name: Option<Box<[u8]>>,
    },
    /// CREDSHARD.PUT, ROTATE and DELETE: the version as an integer.
    Version,
    Meta,
    List,
    /// CREDSHARD.STATS (a map) or INFO (a bulk string of `name:value` lines).
    Stats {
        info: bool,
    },
    /// A request refused before it was planned (not authenticated): the native error.
    Refused,
}

/// What to do with a command.
pub enum Plan<'a> {
    Local(Local<'a>),
    Native(Shape, Request<'a>),
    /// One native request per key (arguments 1..): DELETE for DEL, GET_META for EXISTS.
    PerKey(Shape, Op),
}

/// Who is asking, for the commands that need it.
pub struct Asker<'a> {
    pub context: &'a ExecutorContext,
    /// `None` before the connection authenticates.
    pub principal: Option<&'a Principal>,
    pub now_ms: u64,
}

/// Plans the command in `args` (its name is `spec`'s, its arity checked). `scratch` holds what
/// the plan's request borrows beyond the arguments (a SET's owner and scope, encoded labels).
pub fn plan<'a>(spec: &Spec, args: Args<'a>, asker: &Asker<'a>, scratch: &'a mut BytesMut) -> Plan<'a> {
    let planned = match spec.name {
        "get" => args.str(1).map(|id| Plan::Native(Shape::Bulk, Request::Get(GetRequest::new(id, 0)))),
        "set" => plan_set(args, asker, scratch),
        "del" => per_key(args, Shape::Count, Op::Delete),
        "exists" => per_key(args, Shape::Count, Op::GetMeta),
        "mget" => plan_mget(args, scratch),
        "ttl" | "pttl" => args.str(1).map(|id| {
            Plan::Native(Shape::Ttl { millis: spec.name == "pttl" }, Request::GetMeta(GetMetaRequest { id }))
        }),
        "ping" => match args.len() {
            1 => Ok(Plan::Native(Shape::Pong { echo: false }, Request::Ping(b""))),
            2 => Ok(Plan::Native(Shape::Pong { echo: true }, Request::Ping(args.get(1)))),
            _ => Err(wrong_arity(spec)),
        },
        "echo" => Ok(Plan::Local(Local::Echo(args.get(1)))),
        "hello" => plan_hello(args),
        "auth" => match args.len() {
            2 => Ok(hello_with(Shape::Ok, args.get(1))),
            3 => Ok(hello_with(Shape::Ok, args.get(2))),
            _ => Err(Local::syntax()),
        },
        "quit" => Ok(Plan::Local(Local::Quit)),
        "select" => Ok(Plan::Local(match args.get(1) {
            b"0" => Local::Ok,
            _ => Local::error("ERR", "DB index is out of range (credshard has one keyspace: SELECT 0)"),
        })),
        "client" => Ok(Plan::Local(plan_client(args))),
        "command" => Ok(Plan::Local(Local::Command(args))),
        "config" => Ok(Plan::Local(if args.is(1, "get") && args.len() >= 3 {
            Local::ConfigGet(args)
        } else {
            Local::error("ERR", "only CONFIG GET is supported")
        })),
        "info" => Ok(Plan::Native(Shape::Stats { info: true }, Request::Stats)),
        "credshard.put" => plan_put(args, scratch),
        "credshard.get" => plan_get(args),
        "credshard.meta" => {
            args.str(1).map(|id| Plan::Native(Shape::Meta, Request::GetMeta(GetMetaRequest { id })))
        }
        "credshard.rotate" => plan_rotate(args),
        "credshard.delete" => plan_delete(args),
        "credshard.list" => plan_list(args),
        "credshard.stats" => Ok(Plan::Native(Shape::Stats { info: false }, Request::Stats)),
        _ => unreachable!("every command in COMMANDS is planned"),
    };
    planned.unwrap_or_else(Plan::Local)
}

/// The error for a command with the wrong number of arguments (as Redis words it).
pub fn wrong_arity(spec: &Spec) -> Local<'static> {
    Local::error("ERR", format!("wrong number of arguments for '{}' command", spec.name))
}

/// Whether `count` arguments (the name included) fit `spec`'s arity.
pub fn arity_fits(spec: &Spec, count: usize) -> bool {
    let count = count as i64;
    if spec.arity >= 0 {
        count == spec.arity
    } else {
        count >= -spec.arity
    }
}

fn per_key(args: Args<'_>, shape: Shape, op: Op) -> Result<Plan<'_>, Local<'_>> {
    for index in 1..args.len() {
        args.str(index)?;
    }
    Ok(Plan::PerKey(shape, op))
}

/// The native request for one key of a [`Plan::PerKey`].
pub fn per_key_request(op: Op, id: &str) -> Request<'_> {
    match op {
        Op::Delete => Request::Delete(credshard_protocol::op::delete::DeleteRequest::new(id, None)),
        Op::GetMeta => Request::GetMeta(GetMetaRequest { id }),
        _ => unreachable!("DEL and EXISTS only"),
    }
}

fn hello_with(shape: Shape, token: &[u8]) -> Plan<'_> {
    Plan::Native(shape, Request::Hello(HelloRequest { protocol_version: PROTOCOL_VERSION, token }))
}

/// `HELLO [protover [AUTH username password] [SETNAME name]]`. The username is not checked:
/// credshard's tokens have no user names (any, `default` included, is accepted).
fn plan_hello(args: Args<'_>) -> Result<Plan<'_>, Local<'_>> {
    let mut protocol = None;
    let mut token = None;
    let mut name = None;
    if args.len() > 1 {
        protocol = Some(match args.get(1) {
            b"2" => Protocol::Resp2,
            b"3" => Protocol::Resp3,
            _ => return Err(Local::error("NOPROTO", "unsupported protocol version")),
        });
    }
    let mut at = 2;
    while at < args.len() {
        if args.is(at, "auth") && at + 2 < args.len() {
            token = Some(args.get(at + 2));
            at += 3;
        } else if args.is(at, "setname") && at + 1 < args.len() {
            name = Some(args.get(at + 1).into());
            at += 2;
        } else {
            return Err(Local::error("ERR", "syntax error in HELLO option"));
        }
    }
    // Without AUTH, a native PING stands for "is this session authenticated?": it is refused
    // (and counted, and audited) exactly when any other request would be.
    let shape = Shape::Hello { protocol, authenticating: token.is_some(), name };
    Ok(match token {
        Some(token) => hello_with(shape, token),
        None => Plan::Native(shape, Request::Ping(b"")),
    })
}

fn plan_client(args: Args<'_>) -> Local<'_> {
    if args.is(1, "setname") && args.len() == 3 {
        let name = args.get(2);
        if name.iter().any(|&byte| byte <= b' ' || byte > b'~') {
            return Local::error(
                "ERR",
                "Client names cannot contain spaces, newlines or special characters.",
            );
        }
        return Local::ClientSetName(name);
    }
    if args.is(1, "getname") && args.len() == 2 {
        return Local::ClientGetName;
    }
    if args.is(1, "setinfo") && args.len() == 4 {
        return Local::Ok;
    }
    Local::error("ERR", "only CLIENT SETNAME, GETNAME and SETINFO are supported")
}

/// `SET key value [NX | XX] [EX s | PX ms | EXAT unix-s | PXAT unix-ms | KEEPTTL]`.
///
/// SET replaces the secret of a live credential and keeps its owner, scope, kind and labels;
/// a credential it creates gets the token's first owner (or the token's id when its ACL names
/// no owner) and, as scope, the key up to its last `:` (`billing:prod:db` is in scope
/// `billing:prod`; a key without `:` is in scope `default`). NX and XX compare-and-set
/// against the version seen when the command is read.
fn plan_set<'a>(args: Args<'a>, asker: &Asker<'a>, scratch: &'a mut BytesMut) -> Result<Plan<'a>, Local<'a>> {
    let id = args.str(1)?;
    let secret = args.get(2);
    let (mut nx, mut xx, mut keep_ttl) = (false, false, false);
    let mut expiry = None;
    let mut at = 3;
    while at < args.len() {
        let option = args.get(at);
        let value = |scale: u64, absolute: bool| -> Result<Expiry, Local<'a>> {
            if at + 1 >= args.len() {
                return Err(Local::syntax());
            }
            let number = args.number(at + 1)?;
            let invalid = || Local::error("ERR", "invalid expire time in 'set' command");
            let ms = u64::try_from(number)
                .ok()
                .filter(|&n| n > 0)
                .and_then(|n| n.checked_mul(scale))
                .ok_or_else(invalid)?;
            Ok(match absolute {
                false if ms <= TTL_MS_MAX => Expiry::TtlMs(ms),
                true if ms <= credshard_protocol::op::put::EXPIRES_AT_MS_MAX => Expiry::AtUnixMs(ms),
                _ => return Err(invalid()),
            })
        };
        let timed = match option.to_ascii_uppercase().as_slice() {
            b"NX" if !xx => {
                nx = true;
                None
            }
            b"XX" if !nx => {
                xx = true;
                None
            }
            b"KEEPTTL" if expiry.is_none() => {
                keep_ttl = true;
                None
            }
            b"EX" => Some(value(1000, false)?),
            b"PX" => Some(value(1, false)?),
            b"EXAT" => Some(value(1000, true)?),
            b"PXAT" => Some(value(1, true)?),
            b"GET" => return Err(Local::error("ERR", "SET … GET is not supported (read with GET first)")),
            _ => return Err(Local::syntax()),
        };
        match timed {
            Some(_) if expiry.is_some() || keep_ttl => return Err(Local::syntax()),
            Some(timed) => {
                expiry = Some(timed);
                at += 2;
            }
            None => at += 1,
        }
    }
    let Some(principal) = asker.principal else {
        unreachable!("SET is planned for authenticated connections only")
    };
    // The credential's metadata, if it is live and within the token's reach (otherwise the
    // PUT below is refused by the shard, which checks the existing credential itself).
    scratch.clear();
    let found =
        asker.context.store.get_meta(&GetMetaRequest { id }, asker.now_ms, &principal.acl, scratch).is_ok();
    let scratch: &'a BytesMut = scratch;
    let existing =
        found.then(|| MetadataRef::decode(&mut Reader::new(scratch)).expect("the store's own metadata"));
    if xx && existing.is_none() {
        return Ok(Plan::Local(Local::Null));
    }
    let (owner, scope) = match &existing {
        Some(existing) => (existing.owner, existing.scope),
        None => new_owner_and_scope(id, principal),
    };
    let expiry = match (expiry, &existing) {
        (Some(expiry), _) => expiry,
        (None, Some(existing)) if keep_ttl && existing.expires_at_ms != 0 => {
            Expiry::AtUnixMs(existing.expires_at_ms)
        }
        (None, _) => Expiry::Never,
    };
    let expected_version = match (nx, xx) {
        (true, _) => Some(0),
        (_, true) => existing.as_ref().map(|existing| existing.version),
        _ => None,
    };
    let put = PutRequest {
        id,
        owner,
        scope,
        kind: existing.as_ref().and_then(|existing| Kind::from_u8(existing.kind)).unwrap_or_default(),
        expected_version,
        expiry,
        labels: existing.map_or(Labels::from_validated(EMPTY_LABELS), |existing| existing.labels),
        secret,
    };
    Ok(Plan::Native(Shape::Set { null_on_conflict: nx || xx }, Request::Put(put)))
}

/// The owner and scope of a credential SET creates (see [`plan_set`]).
fn new_owner_and_scope<'a>(id: &'a str, principal: &'a Principal) -> (&'a str, &'a str) {
    let owner = principal.acl.owners().first().map_or(principal.id.as_str(), String::as_str);
    let scope =
        id.rfind(':').map(|at| &id[..at]).filter(|scope| !scope.is_empty()).unwrap_or(SET_SCOPE_DEFAULT);
    (owner, scope)
}

fn plan_mget<'a>(args: Args<'a>, scratch: &'a mut BytesMut) -> Result<Plan<'a>, Local<'a>> {
    let count = args.len() - 1;
    if count > BATCH_IDS_MAX {
        return Err(Local::error("ERR", format!("MGET takes at most {BATCH_IDS_MAX} keys")));
    }
    let ids = (1..args.len()).map(|index| args.str(index)).collect::<Result<Vec<_>, _>>()?;
    scratch.clear();
    credshard_protocol::op::batch_get::BatchGetRequest::encode(&ids, scratch);
    let scratch: &'a BytesMut = scratch;
    let batch = credshard_protocol::op::batch_get::BatchGetRequest::from_encoded(scratch)
        .map_err(|error| Local::error("ERR", error.to_string()))?;
    Ok(Plan::Native(Shape::Mget, Request::BatchGet(batch)))
}

/// Options after the fixed arguments: `NAME value` pairs, each name at most once.
fn options<'a, const N: usize>(
    args: Args<'a>,
    from: usize,
    names: [&str; N],
) -> Result<[Option<&'a [u8]>; N], Local<'a>> {
    let mut values = [None; N];
    let mut at = from;
    while at < args.len() {
        let index = names.iter().position(|name| args.is(at, name)).ok_or_else(Local::syntax)?;
        if at + 1 >= args.len() || values[index].is_some() {
            return Err(Local::syntax());
        }
        values[index] = Some(args.get(at + 1));
        at += 2;
    }
    Ok(values)
}

fn option_number<'a>(value: Option<&[u8]>, name: &str) -> Result<Option<u64>, Local<'a>> {
    value
        .map(|value| {
            std::str::from_utf8(value)
                .ok()
                .and_then(|text| text.parse().ok())
                .ok_or_else(|| Local::error("ERR", format!("{name} must be a non-negative integer")))
        })
        .transpose()
}

/// `CREDSHARD.PUT id owner scope secret [KIND k] [IFVERSION v] [EX s | PX ms] [LABELS k=v,…]`.
fn plan_put<'a>(args: Args<'a>, scratch: &'a mut BytesMut) -> Result<Plan<'a>, Local<'a>> {
    let (id, owner, scope) = (args.str(1)?, args.str(2)?, args.str(3)?);
    let [kind, if_version, ex, px, labels] = options(args, 5, ["kind", "ifversion", "ex", "px", "labels"])?;
    let kind = match kind {
        None => Kind::Generic,
        Some(name) => std::str::from_utf8(name).ok().and_then(Kind::from_name).ok_or_else(|| {
            Local::error("ERR", "KIND is one of generic, api-key, password, token, certificate")
        })?,
    };
    let expiry = match (option_number(ex, "EX")?, option_number(px, "PX")?) {
        (None, None) => Expiry::Never,
        (Some(seconds), None) if seconds > 0 => {
            Expiry::TtlMs(seconds.saturating_mul(1000).min(TTL_MS_MAX + 1))
        }
        (None, Some(ms)) if ms > 0 => Expiry::TtlMs(ms),
        _ => return Err(Local::error("ERR", "one positive EX or PX")),
    };
    scratch.clear();
    let labels = std::str::from_utf8(labels.unwrap_or_default())
        .map_err(|_| Local::error("ERR", "labels must be UTF-8"))?;
    let pairs: Vec<(&str, &str)> = labels
        .split(',')
        .filter(|pair| !pair.is_empty())
        .map(|pair| pair.split_once('=').ok_or_else(|| Local::error("ERR", "LABELS is key=value,key=value")))
        .collect::<Result<_, _>>()?;
    encode_labels(&pairs, scratch);
    let scratch: &'a BytesMut = scratch;
    let put = PutRequest {
        id,
        owner,
        scope,
        kind,
        expected_version: option_number(if_version, "IFVERSION")?,
        expiry,
        labels: Labels::from_validated(scratch),
        secret: args.get(4),
    };
    Ok(Plan::Native(Shape::Version, Request::Put(put)))
}

/// `CREDSHARD.GET id [VERSION v]`.
fn plan_get(args: Args<'_>) -> Result<Plan<'_>, Local<'_>> {
    let id = args.str(1)?;
    let [version] = options(args, 2, ["version"])?;
    let version = option_number(version, "VERSION")?.unwrap_or(0);
    Ok(Plan::Native(Shape::Bulk, Request::Get(GetRequest::new(id, version))))
}

/// `CREDSHARD.ROTATE id secret [GRACE s] [IFVERSION v]`.
fn plan_rotate(args: Args<'_>) -> Result<Plan<'_>, Local<'_>> {
    let id = args.str(1)?;
    let [grace, if_version] = options(args, 3, ["grace", "ifversion"])?;
    let rotate = RotateRequest {
        id,
        expected_version: option_number(if_version, "IFVERSION")?,
        grace_period_seconds: option_number(grace, "GRACE")?,
        secret: args.get(2),
    };
    Ok(Plan::Native(Shape::Version, Request::Rotate(rotate)))
}

/// `CREDSHARD.DELETE id [IFVERSION v]`.
fn plan_delete(args: Args<'_>) -> Result<Plan<'_>, Local<'_>> {
    let id = args.str(1)?;
    let [if_version] = options(args, 2, ["ifversion"])?;
    let delete =
        credshard_protocol::op::delete::DeleteRequest::new(id, option_number(if_version, "IFVERSION")?);
    Ok(Plan::Native(Shape::Version, Request::Delete(delete)))
}

/// `CREDSHARD.LIST [OWNER o] [SCOPE s] [LIMIT n] [CURSOR c]`.
fn plan_list(args: Args<'_>) -> Result<Plan<'_>, Local<'_>> {
    let [owner, scope, limit, cursor] = options(args, 1, ["owner", "scope", "limit", "cursor"])?;
    fn utf8(value: Option<&[u8]>) -> Result<&str, Local<'static>> {
        std::str::from_utf8(value.unwrap_or_default())
            .map_err(|_| Local::error("ERR", "owners and scopes must be UTF-8"))
    }
    let limit = option_number(limit, "LIMIT")?.unwrap_or(100).min(u64::from(LIST_PAGE_MAX)) as u16;
    let list =
        ListRequest { owner: utf8(owner)?, scope: utf8(scope)?, limit, cursor: cursor.unwrap_or_default() };
    Ok(Plan::Native(Shape::List, Request::List(list)))
}

/// Writes a [`Local`] reply. `name` is the connection's client name.
pub fn write_local(
    local: &Local<'_>,
    context: &ExecutorContext,
    name: &mut Option<Box<[u8]>>,
    reply: &mut Reply<'_>,
) {
    match local {
        Local::Error { code, message } => reply.error(code, message),
        Local::Ok | Local::Quit => reply.ok(),
        Local::Null => reply.null(),
        Local::Echo(text) => reply.bulk(text),
        Local::ClientGetName => match name {
            Some(name) => reply.bulk(name),
            None => reply.null(),
        },
        Local::ClientSetName(new) => {
            *name = (!new.is_empty()).then(|| (*new).into());
            reply.ok();
        }
        Local::Command(args) => write_command(*args, reply),
        Local::ConfigGet(args) => write_config(*args, context, reply),
    }
}

/// `COMMAND`, `COMMAND COUNT`, `COMMAND INFO name…`, `COMMAND LIST`, `COMMAND DOCS`.
fn write_command(args: Args<'_>, reply: &mut Reply<'_>) {
    let info = |spec: &Spec, reply: &mut Reply<'_>| {
        reply.array(6);
        reply.bulk(spec.name.as_bytes());
        reply.integer(spec.arity);
        reply.array(spec.flags.len());
        for flag in spec.flags {
            reply.simple(flag);
        }
        reply.integer(spec.first_key);
        reply.integer(spec.last_key);
        reply.integer(spec.step);
    };
    if args.len() == 1 {
        reply.array(COMMANDS.len());
        COMMANDS.iter().for_each(|spec| info(spec, reply));
    } else if args.is(1, "count") {
        reply.integer(COMMANDS.len() as i64);
    } else if args.is(1, "list") {
        reply.array(COMMANDS.len());
        COMMANDS.iter().for_each(|spec| reply.bulk(spec.name.as_bytes()));
    } else if args.is(1, "info") {
        reply.array(args.len() - 2);
        for name in args.iter().skip(2) {
            match find(name) {
                Some(spec) => info(spec, reply),
                None => reply.null(),
            }
        }
    } else if args.is(1, "docs") {
        // No documentation entries: clients that ask fall back to COMMAND's own replies.
        reply.map(0);
    } else {
        reply.error("ERR", "COMMAND takes COUNT, LIST, INFO or DOCS");
    }
}

/// `CONFIG GET parameter…`: the few Redis parameters with a meaning here (how writes are made
/// durable), exact names or `*`; other names are left out of the reply, as Redis does.
fn write_config(args: Args<'_>, context: &ExecutorContext, reply: &mut Reply<'_>) {
    let embedded = context.database.is_none();
    let fsync = match context.config.fsync {
        FsyncMode::Always => "always",
        FsyncMode::Never => "no",
    };
    let known = [
        ("appendonly", if embedded { "yes" } else { "no" }),
        ("appendfsync", fsync),
        ("save", ""),
        ("databases", "1"),
    ];
    let asked = |name: &str| {
        args.iter().skip(2).any(|pattern| pattern == b"*" || pattern.eq_ignore_ascii_case(name.as_bytes()))
    };
    let matching: Vec<_> = known.iter().filter(|(name, _)| asked(name)).collect();
    reply.map(matching.len());
    for (name, value) in matching {
        reply.key(name);
        reply.bulk(value.as_bytes());
    }
}

/// One native reply frame: its status and body.
fn frames(native: &[u8]) -> impl Iterator<Item = (Status, &[u8])> {
    let mut rest = native;
    std::iter::from_fn(move || {
        let header =
            frame::check(rest, usize::MAX).expect("the server's own frames").filter(|_| !rest.is_empty())?;
        let (whole, after) = rest.split_at(header.frame_bytes);
        rest = after;
        let status = Status::from_u8(header.code).expect("the server's own status codes");
        Some((status, &whole[header.body_range()]))
    })
}

/// The message of a native error body.
fn error_message(body: &[u8]) -> &str {
    let mut reader = Reader::new(body);
    let _detail = reader.u64("detail");
    reader.str16("message", usize::MAX).unwrap_or("")
}

/// Answers a native error as Redis clients expect: `NOAUTH` before authentication,
/// `WRONGPASS` for a refused token, `NOPERM` for what an ACL refuses, the status name
/// (`VERSION_CONFLICT`, `UNAVAILABLE`, …) for credshard's own failures, `ERR` for bad requests.
fn write_error(status: Status, body: &[u8], authenticated: bool, reply: &mut Reply<'_>) {
    let message = error_message(body);
    match status {
        Status::Unauthorized if !authenticated => reply.error("NOAUTH", "Authentication required."),
        Status::Unauthorized => reply.error("NOPERM", message),
        Status::Malformed | Status::TooLarge | Status::UnknownOp => reply.error("ERR", message),
        Status::VersionConflict => {
            let current = Reader::new(body).u64("detail").unwrap_or(0);
            reply.error("VERSION_CONFLICT", &format!("{message} (current version {current})"));
        }
        other => reply.error(other.name(), message),
    }
}

/// Writes the RESP reply of a command from its native replies (`native`: one frame per native
/// request, in the order they finished). `authenticated`: as the session was when the command
/// was read; `reply.protocol` is the one the command's reply is written in.
pub fn translate(
    shape: &Shape,
    native: &[u8],
    authenticated: bool,
    context: &ExecutorContext,
    reply: &mut Reply<'_>,
) {
    if let Shape::Count = shape {
        let mut count = 0;
        for (status, body) in frames(native) {
            match status {
                Status::Ok => count += 1,
                Status::NotFound | Status::Expired => {}
                _ => return write_error(status, body, authenticated, reply),
            }
        }
        return reply.integer(count);
    }
    let (status, body) = frames(native).next().expect("every native request is answered");
    if status != Status::Ok || *shape == Shape::Refused {
        return match (shape, status) {
            (Shape::Bulk, Status::NotFound | Status::Expired | Status::Retired) => reply.null(),
            (Shape::Ttl { .. }, Status::NotFound | Status::Expired) => reply.integer(-2),
            (Shape::Set { null_on_conflict: true }, Status::VersionConflict) => reply.null(),
            (Shape::Ok | Shape::Hello { authenticating: true, .. }, Status::Unauthorized) => {
                reply.error("WRONGPASS", "invalid username-password pair or user is disabled.")
            }
            (Shape::Hello { authenticating: false, .. }, Status::Unauthorized) => reply.error(
                "NOAUTH",
                "HELLO must be called with the client already authenticated, otherwise the HELLO <proto> \
                 AUTH <user> <pass> option can be used to authenticate the client and select the RESP \
                 protocol version at the same time",
            ),
            _ => write_error(status, body, authenticated, reply),
        };
    }
    let mut reader = Reader::new(body);
    match shape {
        Shape::Ok | Shape::Set { .. } => reply.ok(),
        Shape::Bulk => {
            MetadataRef::decode(&mut reader).expect("a GET reply");
            reply.bulk(reader.bytes32("secret", usize::MAX).expect("a GET reply"));
        }
        Shape::Count | Shape::Refused => unreachable!("answered above"),
        Shape::Ttl { millis } => {
            let metadata = MetadataRef::decode(&mut reader).expect("a GET_META reply");
            if metadata.expires_at_ms == 0 {
                return reply.integer(-1);
            }
            let left = metadata.expires_at_ms.saturating_sub(crate::time::now_ms()) as i64;
            reply.integer(if *millis { left } else { (left + 500) / 1000 });
        }
        Shape::Mget => write_mget(&mut reader, reply),
        Shape::Pong { echo: false } => reply.simple("PONG"),
        Shape::Pong { echo: true } => reply.bulk(reader.rest()),
        // The connection switched protocols (and names) when the HELLO was answered.
        Shape::Hello { .. } => write_hello(context, reply),
        Shape::Version => reply.integer(reader.u64("version").expect("a write's reply") as i64),
        Shape::Meta => write_meta(&mut reader, reply),
        Shape::List => write_list(&mut reader, reply),
        Shape::Stats { info } => write_stats(&mut reader, *info, reply),
    }
}

fn write_hello(context: &ExecutorContext, reply: &mut Reply<'_>) {
    reply.map(7);
    reply.key("server");
    reply.bulk(b"credshard");
    reply.key("version");
    reply.bulk(env!("CARGO_PKG_VERSION").as_bytes());
    reply.key("proto");
    reply.integer(if reply.protocol == Protocol::Resp3 { 3 } else { 2 });
    reply.key("id");
    reply.integer(context.router.shard_id() as i64);
    reply.key("mode");
    reply.bulk(b"standalone");
    reply.key("role");
    reply.bulk(b"master");
    reply.key("modules");
    reply.array(0);
}

/// MGET: the secrets in order, a null for each id without one. As in Redis, an id the token
/// may not read fails the whole command (`NOPERM`), and so does any other failure of an item.
fn write_mget(reader: &mut Reader<'_>, reply: &mut Reply<'_>) {
    let count = reader.u16("count").expect("a BATCH_GET reply");
    let items = reader.clone();
    for _ in 0..count {
        let status = Status::from_u8(reader.u8("status").expect("a BATCH_GET reply")).expect("a status");
        if status == Status::Ok {
            MetadataRef::decode(reader).expect("a BATCH_GET item");
            reader.bytes32("secret", usize::MAX).expect("a BATCH_GET item");
            continue;
        }
        reader.u64("detail").expect("a BATCH_GET item");
        let message = reader.str16("message", usize::MAX).expect("a BATCH_GET item");
        match status {
            Status::NotFound | Status::Expired | Status::Retired => {}
            Status::Unauthorized => return reply.error("NOPERM", message),
            Status::TooLarge => {
                return reply
                    .error("ERR", "the values take more than --batch-reply-bytes-max: ask for fewer keys")
            }
            _ => return reply.error(status.name(), message),
        }
    }
    let mut reader = items;
    reply.array(count as usize);
    for _ in 0..count {
        let status = Status::from_u8(reader.u8("status").expect("checked")).expect("checked");
        if status == Status::Ok {
            MetadataRef::decode(&mut reader).expect("checked");
            reply.bulk(reader.bytes32("secret", usize::MAX).expect("checked"));
        } else {
            reader.u64("detail").expect("checked");
            reader.str16("message", usize::MAX).expect("checked");
            reply.null();
        }
    }
}

fn write_meta(reader: &mut Reader<'_>, reply: &mut Reply<'_>) {
    let metadata = MetadataRef::decode(reader).expect("a GET_META reply");
    reply.map(11);
    reply.key("id");
    reply.bulk(metadata.id.as_bytes());
    reply.key("owner");
    reply.bulk(metadata.owner.as_bytes());
    reply.key("scope");
    reply.bulk(metadata.scope.as_bytes());
    reply.key("kind");
    reply.bulk(Kind::from_u8(metadata.kind).map_or("unknown", Kind::name).as_bytes());
    reply.key("version");
    reply.integer(metadata.version as i64);
    reply.key("created_at_ms");
    reply.integer(metadata.created_at_ms as i64);
    reply.key("updated_at_ms");
    reply.integer(metadata.updated_at_ms as i64);
    reply.key("expires_at_ms");
    match metadata.expires_at_ms {
        0 => reply.null(),
        at => reply.integer(at as i64),
    }
    reply.key("key_id");
    reply.integer(metadata.key_id.into());
    reply.key("labels");
    reply.map(metadata.labels.len());
    for (key, value) in metadata.labels.iter() {
        reply.key(key);
        reply.bulk(value.as_bytes());
    }
    reply.key("versions");
    let count = reader.u16("version_count").expect("a GET_META reply");
    reply.array(count as usize);
    for _ in 0..count {
        let version = reader.u64("version").expect("a version");
        let created_at_ms = reader.u64("created_at_ms").expect("a version");
        let state = VersionState::from_u8(reader.u8("state").expect("a version"))
            .map_or("unknown", VersionState::name);
        reply.map(3);
        reply.key("version");
        reply.integer(version as i64);
        reply.key("created_at_ms");
        reply.integer(created_at_ms as i64);
        reply.key("state");
        reply.bulk(state.as_bytes());
    }
}

/// `[next_cursor, [item…]]`: the cursor is empty after the last page.
fn write_list(reader: &mut Reader<'_>, reply: &mut Reply<'_>) {
    let count = reader.u16("count").expect("a LIST reply");
    let mut items = Vec::with_capacity(count as usize);
    for _ in 0..count {
        let item = (|| {
            Some((
                reader.str16("id", usize::MAX).ok()?,
                reader.str16("owner", usize::MAX).ok()?,
                reader.str16("scope", usize::MAX).ok()?,
                reader.u8("kind").ok()?,
                reader.u64("version").ok()?,
                reader.u64("expires_at_ms").ok()?,
            ))
        })()
        .expect("a LIST item");
        items.push(item);
    }
    let cursor = reader.bytes32("next_cursor", usize::MAX).expect("a LIST reply");
    reply.array(2);
    reply.bulk(cursor);
    reply.array(items.len());
    for (id, owner, scope, kind, version, expires_at_ms) in items {
        reply.map(6);
        reply.key("id");
        reply.bulk(id.as_bytes());
        reply.key("owner");
        reply.bulk(owner.as_bytes());
        reply.key("scope");
        reply.bulk(scope.as_bytes());
        reply.key("kind");
        reply.bulk(Kind::from_u8(kind).map_or("unknown", Kind::name).as_bytes());
        reply.key("version");
        reply.integer(version as i64);
        reply.key("expires_at_ms");
        match expires_at_ms {
            0 => reply.null(),
            at => reply.integer(at as i64),
        }
    }
}

fn write_stats(reader: &mut Reader<'_>, info: bool, reply: &mut Reply<'_>) {
    let count = reader.u16("count").expect("a STATS reply");
    let values: Vec<(&str, u64)> = (0..count)
        .map(|_| {
            (reader.str16("name", usize::MAX).expect("a counter"), reader.u64("value").expect("a counter"))
        })
        .collect();
    if info {
        let mut text = String::from("# credshard\r\n");
        for (name, value) in values {
            text.push_str(&format!("{name}:{value}\r\n"));
        }
        return reply.bulk(text.as_bytes());
    }
    reply.map(values.len());
    for (name, value) in values {
        reply.key(name);
        reply.integer(value as i64);
    }
}
