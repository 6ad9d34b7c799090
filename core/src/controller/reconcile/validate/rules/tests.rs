use super::*;
use crate::controller::api::{JsonSchemaSpec, ValidateSpec};

fn spec(validate: ValidateSpec, format: Option<PayloadFormat>) -> ExternalSourceSpec {
    serde_json::from_value(serde_json::json!({
        "interval": "5m",
        "generator": {"type": "http", "http": {"url": "http://x.invalid/"}},
        "format": format,
        "validate": validate,
    }))
    .unwrap()
}

fn media(value: &str) -> MediaType {
    MediaType::parse(value).unwrap()
}

#[test]
fn media_types_compare_type_and_subtype_only() {
    let json = media("application/json");
    assert_eq!(check_content_type(&json, Some("application/json")), Ok(()));
    assert_eq!(check_content_type(&json, Some("Application/JSON; charset=utf-8")), Ok(()));
    assert_eq!(check_content_type(&json, Some("  application/json ;charset=\"utf-8\"")), Ok(()));
    assert_eq!(media("application/json; charset=utf-8"), json, "the expected value's parameters are ignored too");
    for other in ["text/html; charset=utf-8", "application/json-seq", "application/problem+json", "json", ""] {
        assert!(check_content_type(&json, Some(other)).is_err(), "{other:?}");
    }
    assert!(check_content_type(&json, None).is_err());
    assert_eq!(MediaType::parse("application/"), None);
    assert_eq!(MediaType::parse("application json/x"), None);
    assert_eq!(MediaType::parse("a/b/c"), None);
}

#[test]
fn a_content_type_refusal_says_expected_and_received() {
    let json = media("application/json");
    let e = check_content_type(&json, Some("text/html; charset=utf-8")).unwrap_err();
    assert_eq!(
        e.to_string(),
        "spec.validate.contentType: expected \"application/json\", received \"text/html; charset=utf-8\""
    );
    let e = check_content_type(&json, None).unwrap_err();
    assert_eq!(
        e.to_string(),
        "spec.validate.contentType: expected \"application/json\", received no Content-Type header"
    );
    // An absurd header is cut to fit a condition.
    let long = format!("text/{}", "x".repeat(500));
    let e = check_content_type(&json, Some(&long)).unwrap_err().to_string();
    assert!(e.len() < 200 && e.ends_with("…\""), "{e}");
}

#[test]
fn a_predicate_must_yield_exactly_one_true() {
    assert_eq!(predicate_verdict(b"true\n"), Ok(()));
    assert_eq!(predicate_verdict(b"false\n"), Err(Verdict::Other("false".into())));
    assert_eq!(predicate_verdict(b"null\n"), Err(Verdict::Other("null".into())));
    assert_eq!(predicate_verdict(b"\"true\"\n"), Err(Verdict::Other("\"true\"".into())), "a string is not true");
    assert_eq!(predicate_verdict(b"1\n"), Err(Verdict::Other("1".into())));
    assert_eq!(predicate_verdict(b""), Err(Verdict::Nothing));
    assert_eq!(predicate_verdict(b"true\ntrue\n"), Err(Verdict::Several(2)));
    assert_eq!(predicate_verdict(b"true\nfalse\n"), Err(Verdict::Several(2)));
}

#[test]
fn predicate_runs_are_judged_and_named_by_their_expression() {
    let expression: Arc<str> = Arc::from(".items | length > 0");
    assert_eq!(predicate_result(&expression, Ok(b"true\n".to_vec())), Ok(()));
    let e = predicate_result(&expression, Ok(b"false\n".to_vec())).unwrap_err();
    assert_eq!(e.to_string(), "spec.validate.jq \".items | length > 0\" yielded false, not true");
    let e = predicate_result(&expression, Err(TransformError::TooLarge(PREDICATE_OUTPUT))).unwrap_err();
    assert_eq!(e.to_string(), "spec.validate.jq \".items | length > 0\" yielded more than 1024 bytes, not true");
    let e = predicate_result(&expression, Err(TransformError::Input("expected value at line 1".into()))).unwrap_err();
    assert_eq!(
        e.to_string(),
        "spec.validate.jq \".items | length > 0\" the payload is not JSON: expected value at line 1"
    );
    assert!(!e.is_spec_error() && !e.is_transient());
    let e = predicate_result(&expression, Err(TransformError::Compile("parse error".into()))).unwrap_err();
    assert!(e.is_spec_error());
    let e = predicate_result(&expression, Err(TransformError::Worker("EAGAIN".into()))).unwrap_err();
    assert!(e.is_transient());
}

#[test]
fn schema_refusals_name_the_config_map_and_the_instance_path() {
    let reference = ConfigMapKeyReference { name: "schemas".into(), key: "items.json".into() };
    assert_eq!(schema_result(&reference, Ok(())), Ok(()));
    let invalid =
        |path: &str| TransformError::Invalid { path: path.into(), message: "want string, but got number".into() };
    let e = schema_result(&reference, Err(invalid("/items/1/name"))).unwrap_err();
    assert_eq!(
        e.to_string(),
        "spec.validate.jsonSchema (ConfigMap \"schemas\" key \"items.json\"): the payload does not hold at instance \
         path \"/items/1/name\": want string, but got number"
    );
    let e = schema_result(&reference, Err(invalid(""))).unwrap_err().to_string();
    assert!(e.contains("at instance path \"\" (the document itself): "), "{e}");
    let e = schema_result(&reference, Err(TransformError::Compile("bad".into()))).unwrap_err();
    assert!(e.is_spec_error());
    assert_eq!(
        e.to_string(),
        "spec.validate.jsonSchema (ConfigMap \"schemas\" key \"items.json\") does not compile: bad"
    );
}

#[test]
fn instance_paths_are_quoted_and_the_root_is_named() {
    assert_eq!(instance_path("/a/0"), "\"/a/0\"");
    assert_eq!(instance_path("/a~1b"), "\"/a~1b\"");
    assert_eq!(instance_path(""), "\"\" (the document itself)");
}

#[test]
fn rules_come_from_the_spec_and_problems_name_the_field() {
    let all = ValidateSpec {
        content_type: Some("Application/JSON".into()),
        jq: Some(".items | length > 0".into()),
        json_schema: Some(JsonSchemaSpec {
            config_map_ref: ConfigMapKeyReference { name: "schemas".into(), key: "items.json".into() },
        }),
    };
    let rules = Rules::from_spec(&spec(all.clone(), None)).unwrap();
    assert_eq!(rules.content_type, Some(media("application/json")));
    assert_eq!(rules.jq.as_deref(), Some(".items | length > 0"));
    assert_eq!(rules.json_schema.unwrap().name, "schemas");
    assert_eq!(Rules::from_spec(&spec(ValidateSpec::default(), None)).unwrap(), Rules::default());

    let bad = |v: ValidateSpec, format| Rules::from_spec(&spec(v, format)).unwrap_err().message;
    let e = bad(ValidateSpec { content_type: Some("json".into()), ..Default::default() }, None);
    assert!(e.starts_with("spec.validate.contentType: \"json\" must be a media type"), "{e}");
    let e = bad(ValidateSpec { content_type: Some("application/*".into()), ..Default::default() }, None);
    assert!(e.ends_with("without wildcards"), "{e}");
    let e = bad(ValidateSpec { jq: Some("  ".into()), ..Default::default() }, None);
    assert_eq!(e, "spec.validate.jq: \"  \" must not be empty");
    let mut no_key = all.clone();
    no_key.json_schema.as_mut().unwrap().config_map_ref.key = String::new();
    assert!(bad(no_key, None).starts_with("spec.validate.jsonSchema.configMapRef: \"schemas/\""));
    // An archive is not JSON: only the content type applies to it.
    let e = bad(all.clone(), Some(PayloadFormat::Archive));
    assert_eq!(e, "spec.validate.jq: \"set\" reads JSON; it applies only with spec.format: file");
    let archive = ValidateSpec { content_type: Some("application/gzip".into()), ..Default::default() };
    assert!(Rules::from_spec(&spec(archive, Some(PayloadFormat::Archive))).is_ok());
}
