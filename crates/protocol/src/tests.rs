use std::path::PathBuf;

use super::*;

fn fixtures(dir: &str) -> Vec<(String, String)> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("fixtures")
        .join(dir);
    let mut out: Vec<_> = std::fs::read_dir(&dir)
        .expect("fixture dir")
        .map(|e| {
            let path = e.expect("entry").path();
            let name = path
                .file_stem()
                .expect("stem")
                .to_string_lossy()
                .into_owned();
            (name, std::fs::read_to_string(&path).expect("fixture"))
        })
        .collect();
    out.sort();
    out
}

fn type_of(message: &impl Serialize) -> String {
    let value = serde_json::to_value(message).expect("serialize");
    value["type"].as_str().expect("type tag").to_owned()
}

#[test]
fn every_client_fixture_round_trips() {
    let all = fixtures("client");
    let names: Vec<_> = all.iter().map(|(n, _)| n.as_str()).collect();
    let mut expected = CLIENT_TYPES.to_vec();
    expected.sort();
    assert_eq!(names, expected, "one fixture per client message type");
    for (name, text) in all {
        let parsed = ClientMessage::parse(&text).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(type_of(&parsed), name);
        let back: serde_json::Value = serde_json::to_value(&parsed).expect("serialize");
        let original: serde_json::Value = serde_json::from_str(&text).expect("json");
        assert_eq!(back, original, "{name} round trip");
    }
}

#[test]
fn every_server_fixture_round_trips() {
    let all = fixtures("server");
    assert_eq!(all.len(), 19, "one fixture per server message type");
    for (name, text) in all {
        let parsed: ServerMessage =
            serde_json::from_str(&text).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(type_of(&parsed), name);
        let back: serde_json::Value = serde_json::from_str(&parsed.to_json()).expect("json");
        let original: serde_json::Value = serde_json::from_str(&text).expect("json");
        assert_eq!(back, original, "{name} round trip");
    }
}

#[test]
fn parse_errors_are_classified() {
    assert_eq!(
        ClientMessage::parse("{not json").unwrap_err().code(),
        ErrorCode::MalformedJson
    );
    assert_eq!(
        ClientMessage::parse(r#"{"type":"dance"}"#)
            .unwrap_err()
            .code(),
        ErrorCode::UnknownType
    );
    assert_eq!(
        ClientMessage::parse(r#"{"sdp":"x"}"#).unwrap_err().code(),
        ErrorCode::UnknownType
    );
    assert_eq!(
        ClientMessage::parse(r#"{"type":"join","room":"a"}"#)
            .unwrap_err()
            .code(),
        ErrorCode::InvalidMessage
    );
    assert_eq!(
        ClientMessage::parse(r#"{"type":"join","version":1,"room":"bad room!","name":"x"}"#)
            .unwrap_err()
            .code(),
        ErrorCode::InvalidMessage
    );
}

#[test]
fn room_names_are_validated() {
    assert!(RoomId::new("standup-2.b_c").is_ok());
    assert_eq!(RoomId::new(""), Err(IdError::Length));
    assert_eq!(RoomId::new("x".repeat(65)), Err(IdError::Length));
    assert_eq!(RoomId::new("a/b"), Err(IdError::Charset));
}
