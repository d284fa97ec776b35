//! Table-driven checks, mostly the worked examples of the EventBridge user guide ("Event
//! patterns", "Comparison operators for use in event patterns", "Event patterns: arrays").

use serde_json::{json, Value};

use super::*;

/// A pattern, and events with whether each must match.
struct Case {
    name: &'static str,
    pattern: Value,
    events: Vec<(Value, bool)>,
}

fn case(name: &'static str, pattern: Value, events: Vec<(Value, bool)>) -> Case {
    Case {
        name,
        pattern,
        events,
    }
}

fn ec2_terminated() -> Value {
    json!({
        "version": "0",
        "id": "6a7e8feb-b491-4cf7-a9f1-bf3703467718",
        "detail-type": "EC2 Instance State-change Notification",
        "source": "aws.ec2",
        "account": "111122223333",
        "time": "2017-12-22T18:43:48Z",
        "region": "us-west-1",
        "resources": ["arn:aws:ec2:us-west-1:123456789012:instance/i-1234567890abcdef0"],
        "detail": {"instance-id": "i-1234567890abcdef0", "state": "terminated"}
    })
}

fn run(cases: &[Case]) {
    for c in cases {
        let pattern = Pattern::from_value(&c.pattern)
            .unwrap_or_else(|e| panic!("{}: pattern refused: {e}", c.name));
        for (i, (event, expected)) in c.events.iter().enumerate() {
            assert_eq!(
                pattern.matches(event),
                *expected,
                "{} (event {i}): {event}",
                c.name
            );
        }
    }
}

#[test]
fn exact_values_and_structure() {
    run(&[
        case(
            "user guide: source, detail-type and nested state",
            json!({"source": ["aws.ec2"], "detail-type": ["EC2 Instance State-change Notification"],
                   "detail": {"state": ["terminated"]}}),
            vec![
                (ec2_terminated(), true),
                (
                    json!({"source": "aws.ec2", "detail-type": "EC2 Instance State-change Notification",
                        "detail": {"state": "running"}}),
                    false,
                ),
                (
                    json!({"source": "aws.ec2", "detail": {"state": "terminated"}}),
                    false,
                ),
            ],
        ),
        case(
            "OR within a field's list",
            json!({"source": ["aws.ec2", "aws.fargate"]}),
            vec![
                (json!({"source": "aws.fargate"}), true),
                (json!({"source": "aws.ec2"}), true),
                (json!({"source": "aws.s3"}), false),
                (json!({}), false),
            ],
        ),
        case(
            "numbers compare by value, booleans and strings exactly",
            json!({"detail": {"count": [5], "ok": [true], "name": ["Alice"]}}),
            vec![
                (
                    json!({"detail": {"count": 5.0, "ok": true, "name": "Alice"}}),
                    true,
                ),
                (
                    json!({"detail": {"count": "5", "ok": true, "name": "Alice"}}),
                    false,
                ),
                (
                    json!({"detail": {"count": 5, "ok": "true", "name": "Alice"}}),
                    false,
                ),
                (
                    json!({"detail": {"count": 5, "ok": true, "name": "alice"}}),
                    false,
                ),
            ],
        ),
        case(
            "user guide: null and empty string",
            json!({"detail": {"eventVersion": [""], "responseElements": [null]}}),
            vec![
                (
                    json!({"detail": {"eventVersion": "", "responseElements": null}}),
                    true,
                ),
                (
                    json!({"detail": {"eventVersion": "", "responseElements": {}}}),
                    false,
                ),
                (json!({"detail": {"eventVersion": ""}}), false),
                (
                    json!({"detail": {"eventVersion": "1.0", "responseElements": null}}),
                    false,
                ),
            ],
        ),
        case(
            "a nested pattern needs an object there",
            json!({"detail": {"state": ["on"]}}),
            vec![
                (json!({"detail": "on"}), false),
                (json!({"detail": {"state": {"state": "on"}}}), false),
                (json!({"detail": {"state": "on"}}), true),
            ],
        ),
    ]);
}

#[test]
fn arrays_in_events() {
    run(&[
        case(
            "user guide: any element of the event's array",
            json!({"resources": [
                "arn:aws:ec2:us-east-1:123456789012:instance/i-b188560f",
                "arn:aws:ec2:us-east-1:111122223333:instance/i-b188560f",
                "arn:aws:ec2:us-east-1:444455556666:instance/i-b188560f"]}),
            vec![
                (
                    json!({"resources": ["arn:aws:ec2:us-east-1:123456789012:instance/i-b188560f",
                                      "arn:aws:ec2:us-east-1:777788889999:instance/i-b188560f"]}),
                    true,
                ),
                (
                    json!({"resources": ["arn:aws:ec2:us-east-1:777788889999:instance/i-b188560f"]}),
                    false,
                ),
                (json!({"resources": []}), false),
            ],
        ),
        case(
            "nested arrays flatten",
            json!({"tags": ["b"]}),
            vec![
                (json!({"tags": [["a"], ["b", "c"]]}), true),
                (json!({"tags": [["a"]]}), false),
            ],
        ),
        case(
            "conditions on one array element must hold on the same element",
            json!({"disks": {"kind": ["boot"], "size": [{"numeric": [">", 100]}]}}),
            vec![
                (
                    json!({"disks": [{"kind": "boot", "size": 10}, {"kind": "data", "size": 500}]}),
                    false,
                ),
                (
                    json!({"disks": [{"kind": "data", "size": 10}, {"kind": "boot", "size": 500}]}),
                    true,
                ),
            ],
        ),
    ]);
}

#[test]
fn prefix_suffix_and_case() {
    run(&[
        case(
            "user guide: prefix",
            json!({"time": [{"prefix": "2017-10-02"}]}),
            vec![
                (json!({"time": "2017-10-02T18:43:48Z"}), true),
                (json!({"time": "2017-10-03T18:43:48Z"}), false),
                (json!({"time": 2017}), false),
            ],
        ),
        case(
            "user guide: prefix ignoring case",
            json!({"detail": {"service": [{"prefix": {"equals-ignore-case": "EventB"}}]}}),
            vec![
                (json!({"detail": {"service": "EventBridge"}}), true),
                (json!({"detail": {"service": "EVENTBRIDGE"}}), true),
                (json!({"detail": {"service": "eventbus"}}), true),
                (json!({"detail": {"service": "Lambda"}}), false),
            ],
        ),
        case(
            "user guide: suffix",
            json!({"FileName": [{"suffix": ".png"}]}),
            vec![
                (json!({"FileName": "image.png"}), true),
                (json!({"FileName": "image.PNG"}), false),
                (json!({"FileName": "image.jpg"}), false),
            ],
        ),
        case(
            "user guide: suffix ignoring case",
            json!({"detail": {"FileName": [{"suffix": {"equals-ignore-case": ".png"}}]}}),
            vec![
                (json!({"detail": {"FileName": "image.PNG"}}), true),
                (json!({"detail": {"FileName": "image.Png"}}), true),
                (json!({"detail": {"FileName": "image.gif"}}), false),
            ],
        ),
        case(
            "user guide: equals-ignore-case",
            json!({"detail-type": [{"equals-ignore-case": "ec2 instance state-change notification"}]}),
            vec![
                (ec2_terminated(), true),
                (json!({"detail-type": "EC2 Instance State-change"}), false),
            ],
        ),
        case(
            "empty prefix matches every string and only strings",
            json!({"a": [{"prefix": ""}]}),
            vec![
                (json!({"a": ""}), true),
                (json!({"a": "x"}), true),
                (json!({"a": 1}), false),
            ],
        ),
    ]);
}

#[test]
fn anything_but() {
    run(&[
        case(
            "user guide: a string",
            json!({"detail": {"state": [{"anything-but": "initializing"}]}}),
            vec![
                (json!({"detail": {"state": "running"}}), true),
                (json!({"detail": {"state": "initializing"}}), false),
                (json!({"detail": {}}), false),
            ],
        ),
        case(
            "user guide: a number",
            json!({"detail": {"x-limit": [{"anything-but": 123}]}}),
            vec![
                (json!({"detail": {"x-limit": 124}}), true),
                (json!({"detail": {"x-limit": 123.0}}), false),
            ],
        ),
        case(
            "user guide: a list of strings",
            json!({"detail": {"state": [{"anything-but": ["stopped", "overloaded"]}]}}),
            vec![
                (json!({"detail": {"state": "terminated"}}), true),
                (json!({"detail": {"state": "stopped"}}), false),
                (json!({"detail": {"state": "overloaded"}}), false),
            ],
        ),
        case(
            "user guide: a list of numbers",
            json!({"detail": {"x-limit": [{"anything-but": [100, 200, 300]}]}}),
            vec![
                (json!({"detail": {"x-limit": 150}}), true),
                (json!({"detail": {"x-limit": 200}}), false),
            ],
        ),
        case(
            "user guide: prefix",
            json!({"detail": {"state": [{"anything-but": {"prefix": "init"}}]}}),
            vec![
                (json!({"detail": {"state": "running"}}), true),
                (json!({"detail": {"state": "initializing"}}), false),
            ],
        ),
        case(
            "user guide: suffix",
            json!({"detail": {"FileName": [{"anything-but": {"suffix": ".txt"}}]}}),
            vec![
                (json!({"detail": {"FileName": "notes.md"}}), true),
                (json!({"detail": {"FileName": "notes.txt"}}), false),
            ],
        ),
        case(
            "user guide: equals-ignore-case list",
            json!({"detail": {"state": [{"anything-but": {"equals-ignore-case": ["Stopped", "OverLoaded"]}}]}}),
            vec![
                (json!({"detail": {"state": "running"}}), true),
                (json!({"detail": {"state": "STOPPED"}}), false),
                (json!({"detail": {"state": "overloaded"}}), false),
            ],
        ),
        case(
            "user guide: wildcard",
            json!({"detail": {"FilePath": [{"anything-but": {"wildcard": "*/lib/*"}}]}}),
            vec![
                (json!({"detail": {"FilePath": "/usr/bin/tern"}}), true),
                (
                    json!({"detail": {"FilePath": "/usr/lib/libtern.so"}}),
                    false,
                ),
            ],
        ),
        case(
            "an array field passes when one element is not excluded",
            json!({"tags": [{"anything-but": "a"}]}),
            vec![
                (json!({"tags": ["a", "b"]}), true),
                (json!({"tags": ["a"]}), false),
            ],
        ),
    ]);
}

#[test]
fn numeric_ranges() {
    run(&[
        case(
            "user guide: ranges and equality",
            json!({"detail": {
                "c-count": [{"numeric": [">", 0, "<=", 5]}],
                "d-count": [{"numeric": ["<", 10]}],
                "x-limit": [{"numeric": ["=", 3.018e2]}]}}),
            vec![
                (
                    json!({"detail": {"c-count": 5, "d-count": 3, "x-limit": 301.8}}),
                    true,
                ),
                (
                    json!({"detail": {"c-count": 0, "d-count": 3, "x-limit": 301.8}}),
                    false,
                ),
                (
                    json!({"detail": {"c-count": 5, "d-count": 10, "x-limit": 301.8}}),
                    false,
                ),
                (
                    json!({"detail": {"c-count": 5, "d-count": 3, "x-limit": 301}}),
                    false,
                ),
                (
                    json!({"detail": {"c-count": "5", "d-count": 3, "x-limit": 301.8}}),
                    false,
                ),
            ],
        ),
        case(
            "inclusive lower bound",
            json!({"n": [{"numeric": [">=", -1.5, "<", 0]}]}),
            vec![
                (json!({"n": -1.5}), true),
                (json!({"n": -0.1}), true),
                (json!({"n": 0}), false),
                (json!({"n": -2}), false),
            ],
        ),
    ]);
}

#[test]
fn exists() {
    run(&[
        case(
            "user guide: exists true",
            json!({"detail": {"state": [{"exists": true}]}}),
            vec![
                (ec2_terminated(), true),
                (json!({"detail": {"state": null}}), true),
                (json!({"detail": {"instance-id": "i-1"}}), false),
            ],
        ),
        case(
            "user guide: exists false",
            json!({"detail": {"state": [{"exists": false}]}}),
            vec![
                (ec2_terminated(), false),
                (json!({"detail": {"instance-id": "i-1"}}), true),
                (json!({"detail": {"state": []}}), true),
            ],
        ),
        case(
            "exists looks at leaves, not intermediate objects",
            json!({"detail": [{"exists": true}]}),
            vec![
                (json!({"detail": {"state": "x"}}), false),
                (json!({"detail": "x"}), true),
            ],
        ),
    ]);
}

#[test]
fn wildcards() {
    run(&[
        case(
            "user guide: wildcard in an ARN",
            json!({"EventBusArn": [{"wildcard": "arn:aws:events:us-east-1:*:event-bus/*"}]}),
            vec![
                (
                    json!({"EventBusArn": "arn:aws:events:us-east-1:123456789012:event-bus/default"}),
                    true,
                ),
                (
                    json!({"EventBusArn": "arn:aws:events:us-west-2:123456789012:event-bus/default"}),
                    false,
                ),
            ],
        ),
        case(
            "user guide: a star spans slashes",
            json!({"FilePath": [{"wildcard": "dir/*.png"}]}),
            vec![
                (json!({"FilePath": "dir/bar.png"}), true),
                (json!({"FilePath": "dir/foo/bar.png"}), true),
                (json!({"FilePath": "dir/bar.jpg"}), false),
                (json!({"FilePath": "other/bar.png"}), false),
            ],
        ),
        case(
            "escaped star is literal",
            json!({"a": [{"wildcard": "a\\*b"}]}),
            vec![(json!({"a": "a*b"}), true), (json!({"a": "axb"}), false)],
        ),
        case(
            "escaped backslash, pieces not overlapping",
            json!({"a": [{"wildcard": "ab*b\\\\"}]}),
            vec![
                (json!({"a": "abb\\"}), true),
                (json!({"a": "ab\\"}), false),
                (json!({"a": "abxb\\"}), true),
            ],
        ),
        case(
            "no star is equality",
            json!({"a": [{"wildcard": "abc"}]}),
            vec![(json!({"a": "abc"}), true), (json!({"a": "abcd"}), false)],
        ),
        case(
            "middle pieces in order",
            json!({"a": [{"wildcard": "*x*y*"}]}),
            vec![
                (json!({"a": "1x2y3"}), true),
                (json!({"a": "1y2x3"}), false),
            ],
        ),
    ]);
}

#[test]
fn cidr() {
    run(&[
        case(
            "user guide: IPv4 block",
            json!({"detail": {"sourceIPAddress": [{"cidr": "10.0.0.0/24"}]}}),
            vec![
                (json!({"detail": {"sourceIPAddress": "10.0.0.255"}}), true),
                (json!({"detail": {"sourceIPAddress": "10.0.1.0"}}), false),
                (json!({"detail": {"sourceIPAddress": "not an ip"}}), false),
            ],
        ),
        case(
            "IPv6 block and /0",
            json!({"ip": [{"cidr": "2001:db8::/32"}, {"cidr": "192.168.0.0/0"}]}),
            vec![
                (json!({"ip": "2001:db8:1::1"}), true),
                (json!({"ip": "8.8.8.8"}), true),
                (json!({"ip": "2001:db9::1"}), false),
            ],
        ),
    ]);
}

#[test]
fn or() {
    run(&[
        case(
            "user guide: $or inside detail",
            json!({"detail": {"$or": [
                {"c-count": [{"numeric": [">", 0, "<=", 5]}]},
                {"d-count": [{"numeric": ["<", 10]}]},
                {"x-limit": [{"numeric": ["=", 3.018e2]}]}]}}),
            vec![
                (json!({"detail": {"c-count": 50, "d-count": 3}}), true),
                (json!({"detail": {"x-limit": 301.8}}), true),
                (json!({"detail": {"c-count": 50, "d-count": 30}}), false),
            ],
        ),
        case(
            "user guide: $or at the top, ANDed with other fields",
            json!({"source": ["aws.ec2"], "$or": [
                {"detail-type": ["EC2 Instance State-change Notification"]},
                {"detail": {"state": ["stopped"]}}]}),
            vec![
                (ec2_terminated(), true),
                (
                    json!({"source": "aws.ec2", "detail": {"state": "stopped"}}),
                    true,
                ),
                (
                    json!({"source": "aws.s3", "detail": {"state": "stopped"}}),
                    false,
                ),
                (
                    json!({"source": "aws.ec2", "detail": {"state": "running"}}),
                    false,
                ),
            ],
        ),
    ]);
}

#[test]
fn non_objects_never_match() {
    let p = Pattern::parse(r#"{"a": [{"exists": false}]}"#).unwrap();
    assert!(p.matches(&json!({})));
    assert!(!p.matches(&json!([])));
    assert!(!p.matches(&json!("a")));
}

#[test]
fn invalid_patterns_name_the_problem_and_path() {
    let cases: Vec<(Value, &str, Problem)> = vec![
        (json!([]), "$", Problem::NotAnObject),
        (json!({}), "$", Problem::EmptyObject),
        (json!({"detail": {}}), "$.detail", Problem::EmptyObject),
        (
            json!({"source": "aws.ec2"}),
            "$.source",
            Problem::NotArrayOrObject { found: "a string" },
        ),
        (
            json!({"detail": {"state": []}}),
            "$.detail.state",
            Problem::EmptyArray,
        ),
        (json!({"a": ["x", ["y"]]}), "$.a[1]", Problem::NestedArray),
        (
            json!({"a": [{"contains": "x"}]}),
            "$.a[0]",
            Problem::UnknownOperator {
                operator: "contains".into(),
            },
        ),
        (
            json!({"a": [{"prefix": "x", "suffix": "y"}]}),
            "$.a[0]",
            Problem::OperatorKeyCount { found: 2 },
        ),
        (
            json!({"a": [{}]}),
            "$.a[0]",
            Problem::OperatorKeyCount { found: 0 },
        ),
        (
            json!({"a": [{"prefix": 1}]}),
            "$.a[0].prefix",
            Problem::BadOperand {
                operator: "prefix",
                expected: "a string or {\"equals-ignore-case\": string}",
            },
        ),
        (
            json!({"a": [{"equals-ignore-case": ["x"]}]}),
            "$.a[0].equals-ignore-case",
            Problem::BadOperand {
                operator: "equals-ignore-case",
                expected: "a string",
            },
        ),
        (
            json!({"a": [{"exists": "yes"}]}),
            "$.a[0].exists",
            Problem::BadOperand {
                operator: "exists",
                expected: "true or false",
            },
        ),
        (
            json!({"a": [{"numeric": [">", 5, "<", 1]}]}),
            "$.a[0].numeric",
            Problem::NumericRange {
                reason: "the lower bound must be less than the upper bound",
            },
        ),
        (
            json!({"a": [{"numeric": [">", "1"]}]}),
            "$.a[0].numeric",
            Problem::NumericRange {
                reason: "every operator must be followed by a number",
            },
        ),
        (
            json!({"a": [{"numeric": ["=", 1, "<", 2]}]}),
            "$.a[0].numeric",
            Problem::NumericRange {
                reason: "'=' cannot be combined with other operators",
            },
        ),
        (
            json!({"a": [{"numeric": [">", 1, ">=", 2]}]}),
            "$.a[0].numeric",
            Problem::NumericRange {
                reason: "at most one lower and one upper bound",
            },
        ),
        (
            json!({"a": [{"numeric": ["!=", 1]}]}),
            "$.a[0].numeric",
            Problem::NumericRange {
                reason: "unknown operator; use <, <=, =, >, >=",
            },
        ),
        (
            json!({"a": [{"numeric": [">", 1, "<"]}]}),
            "$.a[0].numeric",
            Problem::NumericRange {
                reason: "expected one or two operator/number pairs",
            },
        ),
        (
            json!({"a": [{"wildcard": "a**b"}]}),
            "$.a[0].wildcard",
            Problem::Wildcard {
                reason: "consecutive '*' are not allowed",
            },
        ),
        (
            json!({"a": [{"wildcard": "a\\b"}]}),
            "$.a[0].wildcard",
            Problem::Wildcard {
                reason: "'\\' may only escape '*' or '\\'",
            },
        ),
        (
            json!({"a": [{"cidr": "10.0.0.0/33"}]}),
            "$.a[0].cidr",
            Problem::Cidr {
                value: "10.0.0.0/33".into(),
            },
        ),
        (
            json!({"a": [{"cidr": "10.0.0.0"}]}),
            "$.a[0].cidr",
            Problem::Cidr {
                value: "10.0.0.0".into(),
            },
        ),
        (json!({"$or": [{"a": ["x"]}]}), "$.$or", Problem::Or),
        (json!({"$or": [{"a": ["x"]}, "b"]}), "$.$or[1]", Problem::Or),
        (
            json!({"$or": [{"a": ["x"]}, {}]}),
            "$.$or[1]",
            Problem::EmptyObject,
        ),
        (
            json!({"a": [{"anything-but": {"contains": "x"}}]}),
            "$.a[0].anything-but.contains",
            Problem::UnknownOperator {
                operator: "anything-but/contains".into(),
            },
        ),
        (
            json!({"detail": {"my key": [{"anything-but": {"prefix": 5}}]}}),
            "$.detail[\"my key\"][0].anything-but.prefix",
            Problem::BadOperand {
                operator: "prefix",
                expected: "a string or a non-empty array of strings",
            },
        ),
    ];
    for (pattern, path, problem) in cases {
        let err = Pattern::from_value(&pattern).expect_err(&pattern.to_string());
        assert_eq!(err.path(), Some(path), "{pattern}");
        assert_eq!(err.problem(), Some(&problem), "{pattern}");
        assert!(err.to_string().contains(path), "{err}");
    }
}

#[test]
fn anything_but_refuses_mixed_or_empty_lists() {
    for operand in [json!([]), json!(["a", 1]), json!([null]), json!(true)] {
        let pattern = json!({"a": [{"anything-but": operand}]});
        let err = Pattern::from_value(&pattern).expect_err(&pattern.to_string());
        assert_eq!(err.path(), Some("$.a[0].anything-but"), "{pattern}");
    }
}

#[test]
fn text_that_is_not_json_is_refused() {
    let err = Pattern::parse("{\"source\": [").unwrap_err();
    assert!(matches!(err, PatternError::Json(_)), "{err}");
    assert_eq!(err.path(), None);
}

#[test]
fn parse_and_from_value_agree() {
    let text = r#"{"detail": {"state": [{"anything-but": {"prefix": "init"}}, "initial"]}}"#;
    let a: Pattern = text.parse().unwrap();
    let value = serde_json::from_str::<Value>(text).unwrap();
    let b = Pattern::try_from(&value).unwrap();
    assert_eq!(a, b);
    assert_eq!(Pattern::parse(&value).unwrap(), a);
    assert_eq!(Pattern::parse(&text.to_owned()).unwrap(), a);
    assert!(a.matches(&json!({"detail": {"state": "initial"}})));
    assert!(!a.matches(&json!({"detail": {"state": "init"}})));
}

/// The greedy wildcard matcher agrees with a plain backtracking one on every pattern of up to
/// five characters over `a`, `b`, `*` (without `**`) and every text of up to five characters.
#[test]
fn wildcard_agrees_with_backtracking_on_all_small_cases() {
    fn backtrack(p: &[u8], t: &[u8]) -> bool {
        match p.split_first() {
            None => t.is_empty(),
            Some((b'*', rest)) => (0..=t.len()).any(|i| backtrack(rest, &t[i..])),
            Some((c, rest)) => t.first() == Some(c) && backtrack(rest, &t[1..]),
        }
    }
    fn all(alphabet: &[u8], max: usize) -> Vec<Vec<u8>> {
        let mut out = vec![Vec::new()];
        let mut frontier = vec![Vec::new()];
        for _ in 0..max {
            let mut next = Vec::new();
            for s in &frontier {
                for &c in alphabet {
                    let mut longer = s.clone();
                    longer.push(c);
                    next.push(longer);
                }
            }
            out.extend(next.iter().cloned());
            frontier = next;
        }
        out
    }
    let texts = all(b"ab", 5);
    let mut checked = 0;
    for p in all(b"ab*", 5)
        .into_iter()
        .filter(|p| !p.windows(2).any(|w| w == b"**"))
    {
        let text = String::from_utf8(p.clone()).unwrap();
        let w = wildcard::Wildcard::parse(&text, &Path::root()).unwrap();
        for t in &texts {
            let s = std::str::from_utf8(t).unwrap();
            assert_eq!(
                w.matches(s),
                backtrack(&p, t),
                "pattern {text:?} text {s:?}"
            );
            checked += 1;
        }
    }
    assert!(checked > 10_000, "{checked}");
}
