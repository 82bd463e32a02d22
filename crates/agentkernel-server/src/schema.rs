//! Schema-only types: the exact shape of values the engine accepts, so the OpenAPI document
//! says what a valid request is (clients and schemathesis generate from it). Each mirrors a
//! check the engine makes; the engine's check stays the authority.

use utoipa::ToSchema;

/// `agentkernel_core::name::validate_name`.
pub const NAME_PATTERN: &str = r"^[a-zA-Z0-9][a-zA-Z0-9_.-]{0,62}$";
/// `agentkernel_core::duration::parse_duration`, bounded so that every value it matches is
/// within the server's maximum (`bounds::MAX_TTL`, 3650 days): three terms of at most 999 units.
pub const DURATION_PATTERN: &str = r"^([1-9][0-9]{0,2}[smhd]){1,3}$";

/// A string schema with a pattern: a unit type named for what the string is.
macro_rules! string_schema {
    ($(#[doc = $doc:literal])+ $name:ident, $pattern:expr, $max:expr) => {
        $(#[doc = $doc])+
        pub struct $name;

        impl utoipa::PartialSchema for $name {
            fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
                use utoipa::openapi::schema::{ObjectBuilder, Type};
                ObjectBuilder::new()
                    .schema_type(Type::String)
                    .pattern(Some($pattern))
                    .max_length(Some($max))
                    .description(Some(concat!($($doc),+).trim()))
                    .into()
            }
        }

        impl utoipa::ToSchema for $name {}
    };
}

string_schema!(
    /// A sandbox name: a letter or digit, then up to 62 letters, digits, `_`, `.` or `-`.
    SandboxName, NAME_PATTERN, 63
);
string_schema!(
    /// The prefix of forked sandboxes' names (`PREFIX-1` … `PREFIX-1000`): a sandbox name with
    /// room for the largest suffix.
    ForkPrefix, NAME_PATTERN, 58
);
string_schema!(
    /// One argument of a command: any text without NUL.
    Arg, r"^[^\u0000]*$", 32_767
);
string_schema!(
    /// `KEY=VALUE`, with a non-empty key.
    EnvVar, r"^[^=\u0000]+=[^\u0000]*$", 131_072
);
string_schema!(
    /// An absolute directory inside the sandbox.
    SandboxDir, r"^(/[^/\u0000]{0,255})+$", 4095
);
string_schema!(
    /// A duration: a number and a unit (s, m, h, d), up to three times (`90s`, `1h30m`, `2d`).
    DurationText, DURATION_PATTERN, 12
);
string_schema!(
    /// An image: `host`, a directory (`/abs`, `./rel`), an OCI layout (`oci:/path[:tag]`) or
    /// a registry reference (`python:3.12-alpine`, `ghcr.io/org/img@sha256:…`).
    ImageText, IMAGE_PATTERN, 4096
);

string_schema!(
    /// A detached command's id: 12 hex digits.
    DetachedId, r"^[0-9a-f]{12}$", 12
);
string_schema!(
    /// `key:value`: sandboxes carrying that label.
    LabelSelector, r"^[^:\u0000]{1,128}:[^\u0000]{0,256}$", 385
);

/// Standard base64 with padding (what `encoding: base64` content must be).
pub const BASE64_PATTERN: &str = r"^([A-Za-z0-9+/]{4})*([A-Za-z0-9+/]{2}==|[A-Za-z0-9+/]{3}=)?$";

/// `agentkernel_core::image::ImageRef::parse`, for what it accepts without looking anything up.
/// Registry references are bounded piece by piece so the whole stays within the 455 characters
/// the engine accepts.
pub const IMAGE_PATTERN: &str = r"^(host|oci:(/[^/\u0000-\u001f\u007f-\u009f]{0,255})+|\.|\.{0,2}(/[^/\u0000-\u001f\u007f-\u009f]{0,255})+|([a-z0-9]{1,19}(\.[a-z0-9]{1,19}){0,2}(:[0-9]{1,5})?/)?[a-z0-9]{1,19}([._-][a-z0-9]{1,19}){0,2}(/[a-z0-9]{1,19}([._-][a-z0-9]{1,19}){0,2}){0,2}(:[A-Za-z0-9_][A-Za-z0-9_.-]{0,127})?(@sha256:[a-f0-9]{64})?)$";

string_schema!(
    /// A host pattern: `api.example.com`, or `*.example.com` for every name below it.
    HostPattern, concat!(r"^(\*\.)?", "([A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?\\.){0,2}[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?", "$"), 253
);
string_schema!(
    /// A secret bound to a host: `KEY:host`, `KEY=value:host` or `KEY:host:header`.
    SecretBindingText, concat!(
        r"^[A-Za-z_][A-Za-z0-9_]{0,127}(=[^\u0000]{1,4096}:", "([A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?\\.){0,2}[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?",
        r"|:", "([A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?\\.){0,2}[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?", r"(:[A-Za-z0-9!#$%&'*+.^_`|~-]{1,128})?)$"
    ), 4600
);
string_schema!(
    /// A secret's key: an environment variable name.
    SecretKey, r"^[A-Za-z_][A-Za-z0-9_]{0,127}$", 128
);

/// An agent compatibility mode.
#[derive(ToSchema)]
#[allow(dead_code)]
pub enum CompatModeName {
    #[schema(rename = "native")]
    Native,
    #[schema(rename = "claude")]
    Claude,
    #[schema(rename = "codex")]
    Codex,
    #[schema(rename = "gemini")]
    Gemini,
}

/// `permissive`, `moderate` (the default) or `restrictive`.
#[derive(ToSchema)]
#[allow(dead_code)]
pub enum ProfileName {
    #[schema(rename = "permissive")]
    Permissive,
    #[schema(rename = "moderate")]
    Moderate,
    #[schema(rename = "restrictive")]
    Restrictive,
}

/// A backend this build can run sandboxes on.
#[derive(ToSchema)]
#[allow(dead_code)]
pub enum BackendName {
    #[schema(rename = "native")]
    Native,
}

/// Labels: key → value (at most 256 characters, no NUL), or null.
pub fn labels_schema() -> utoipa::openapi::Object {
    use utoipa::openapi::RefOr;
    use utoipa::openapi::schema::{AdditionalProperties, ObjectBuilder, Schema, SchemaType, Type};
    ObjectBuilder::new()
        .schema_type(SchemaType::from_iter([Type::Object, Type::Null]))
        .property_names(Some(
            ObjectBuilder::new()
                .schema_type(Type::String)
                .pattern(Some(r"^[^:\u0000]{1,128}$"))
                .build(),
        ))
        .additional_properties(Some(AdditionalProperties::RefOr(RefOr::T(Schema::Object(
            ObjectBuilder::new()
                .schema_type(Type::String)
                .pattern(Some(r"^[^\u0000]{0,256}$"))
                .build(),
        )))))
        .build()
}

/// Files to write: path (relative to the working directory, or absolute) → UTF-8 content.
pub fn files_schema() -> utoipa::openapi::Object {
    use utoipa::openapi::RefOr;
    use utoipa::openapi::schema::{AdditionalProperties, ObjectBuilder, Schema, Type};
    ObjectBuilder::new()
        .schema_type(Type::Object)
        .property_names(Some(
            ObjectBuilder::new()
                .schema_type(Type::String)
                .pattern(Some(r"^[^\u0000]{1,4095}$"))
                .build(),
        ))
        .additional_properties(Some(AdditionalProperties::RefOr(RefOr::T(Schema::Object(
            ObjectBuilder::new().schema_type(Type::String).build(),
        )))))
        .build()
}

/// One Server-Sent Event of `/run/stream` and `/exec/stream`: its name and one JSON object.
#[derive(ToSchema)]
#[allow(dead_code)]
pub struct StreamEvent {
    pub event: StreamEventName,
    /// A JSON object: `started` {sandbox, pid}, `progress` {stage, message}, `output`
    /// {stream, data}, `done` {exit_code}, `error` {message}.
    pub data: String,
}

#[derive(ToSchema)]
#[allow(dead_code)]
pub enum StreamEventName {
    #[schema(rename = "started")]
    Started,
    #[schema(rename = "progress")]
    Progress,
    #[schema(rename = "output")]
    Output,
    #[schema(rename = "done")]
    Done,
    #[schema(rename = "error")]
    Error,
}
