use crate::sql::text_table;
use crate::tools::{definitions, int_arg};
use serde_json::json;

#[test]
fn every_tool_has_a_closed_object_schema() {
    let tools = definitions();
    let names: Vec<&str> = tools.iter().map(|t| t.name.as_ref()).collect();
    assert_eq!(
        names,
        [
            "list_connections",
            "sql_query",
            "http_request",
            "describe_schema"
        ]
    );
    for t in &tools {
        assert_eq!(t.input_schema["type"], "object", "{}", t.name);
        assert_eq!(t.input_schema["additionalProperties"], false, "{}", t.name);
        assert!(t.description.as_ref().is_some_and(|d| d.len() > 20));
    }
}

#[test]
fn integer_arguments_are_bounded() {
    let a = json!({"max_rows": 5, "big": 5000, "neg": -1, "s": "3"});
    assert_eq!(int_arg(&a, "max_rows", 100, 1, 1000).unwrap(), 5);
    assert_eq!(int_arg(&a, "absent", 100, 1, 1000).unwrap(), 100);
    for k in ["big", "neg", "s"] {
        assert!(int_arg(&a, k, 100, 1, 1000).is_err(), "{k}");
    }
}

#[test]
fn text_table_clips_and_shows_nulls() {
    let t = text_table(
        &["id".into(), "note".into()],
        &[
            vec![Some("1".into()), None],
            vec![Some("2".into()), Some("x\ny".repeat(40))],
        ],
    );
    let lines: Vec<&str> = t.lines().collect();
    assert_eq!(lines[0], "id | note");
    assert_eq!(lines[1], "1 | NULL");
    assert!(lines[2].ends_with('…') && lines.len() == 3);
}
