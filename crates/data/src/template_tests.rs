//! Tests of the chat template renderer and its provenance tracking.
use super::*;

fn msgs(v: &[(&str, &str)]) -> Vec<Message> {
    v.iter()
        .map(|(r, c)| Message {
            role: r.to_string(),
            content: c.to_string(),
        })
        .collect()
}

#[test]
fn chatml_renders_and_tracks() {
    let t = ChatTemplate::new(
        named_template_source(NamedTemplate::Chatml),
        "chatml",
        "",
        "",
    )
    .unwrap();
    let m = msgs(&[("user", "Hi"), ("assistant", "Hello!")]);
    let r = t.render_tracked(&m).unwrap();
    assert_eq!(
        r.text,
        "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\nHello!<|im_end|>\n"
    );
    assert_eq!(&r.text[r.spans[1].clone().unwrap()], "Hello!");
    assert_eq!(&r.text[r.spans[0].clone().unwrap()], "Hi");
}

#[test]
fn trimming_template_tracks_core() {
    let t = ChatTemplate::new(
        named_template_source(NamedTemplate::Llama3),
        "llama3",
        "<s>",
        "</s>",
    )
    .unwrap();
    let m = msgs(&[("user", "  Hi \n"), ("assistant", "Yo ")]);
    let r = t.render_tracked(&m).unwrap();
    assert_eq!(&r.text[r.spans[0].clone().unwrap()], "Hi");
    assert_eq!(&r.text[r.spans[1].clone().unwrap()], "Yo");
    assert!(
        r.text
            .starts_with("<s><|start_header_id|>user<|end_header_id|>\n\nHi<|eot_id|>")
    );
}

#[test]
fn qwen3_think_blocks_are_tracked() {
    let t = ChatTemplate::new(
        named_template_source(NamedTemplate::Qwen3),
        "qwen3",
        "",
        "<|im_end|>",
    )
    .unwrap();
    let m = msgs(&[
        ("user", "Q1"),
        ("assistant", "<think>\nR1\n</think>\n\nA1"),
        ("user", "Q2"),
        ("assistant", "<think>\nR2\n</think>\n\nA2"),
    ]);
    let r = t.render_tracked(&m).unwrap();
    // Earlier turns lose their reasoning; the last keeps it (text checked against
    // transformers' apply_chat_template with this template).
    assert_eq!(
        r.text,
        "<|im_start|>user\nQ1<|im_end|>\n<|im_start|>assistant\nA1<|im_end|>\n<|im_start|>user\nQ2<|im_end|>\n<|im_start|>assistant\n<think>\nR2\n</think>\n\nA2<|im_end|>\n"
    );
    assert_eq!(&r.text[r.spans[1].clone().unwrap()], "A1");
    assert_eq!(
        &r.text[r.spans[3].clone().unwrap()],
        "<think>\nR2\n</think>\n\nA2"
    );
    assert_eq!(&r.text[r.spans[2].clone().unwrap()], "Q2");
}

#[test]
fn mode_hint_does_not_change_results() {
    let src = named_template_source(NamedTemplate::Qwen3);
    let convs = [
        msgs(&[("user", " q "), ("assistant", "a")]),
        msgs(&[("user", "q"), ("assistant", "<think>\nr\n</think>\n\na")]),
        msgs(&[("user", "q"), ("assistant", "\na\n")]),
        msgs(&[("user", "q"), ("assistant", "a")]),
    ];
    let shared = ChatTemplate::new(src, "qwen3", "", "<|im_end|>").unwrap();
    for _ in 0..2 {
        for c in &convs {
            let fresh = ChatTemplate::new(src, "qwen3", "", "<|im_end|>").unwrap();
            assert_eq!(
                shared.render_tracked(c).unwrap(),
                fresh.render_tracked(c).unwrap()
            );
        }
    }
}

#[test]
fn issue_17_group_5_templates_that_loop_or_grow_stop_fast_with_a_clear_error() {
    let m = msgs(&[("user", "a"), ("assistant", "b")]);
    for (what, source) in [
        (
            "nested loops",
            "{% for i in range(10000) %}{% for j in range(10000) %}{% endfor %}{% endfor %}",
        ),
        (
            "string doubling",
            "{% set ns = namespace(s='x') %}{% for i in range(40) %}{% set ns.s = ns.s ~ ns.s %}{% endfor %}{{ ns.s }}",
        ),
        (
            "output flood",
            "{% set big = 'x' * 1000000 %}{% for i in range(100) %}{{ big }}{% endfor %}",
        ),
        ("repeat", "{{ 'x' * 1000000000 }}"),
    ] {
        let t = ChatTemplate::new(source, "test", "", "").unwrap();
        let started = std::time::Instant::now();
        let err = t.render_tracked(&m).unwrap_err();
        let secs = started.elapsed().as_secs_f64();
        let text = format!("{err:#}");
        assert!(
            text.contains(TEMPLATE_LIMIT) || text.contains("too large"),
            "{what}: {text}"
        );
        assert!(secs < 5.0, "{what}: took {secs:.1} s");
    }
    // A real template on a long conversation stays far inside the budget.
    let t = ChatTemplate::new(
        named_template_source(NamedTemplate::Llama3),
        "llama3",
        "<|begin_of_text|>",
        "<|eot_id|>",
    )
    .unwrap();
    let long: Vec<(&str, &str)> = (0..2000)
        .map(|i| {
            if i % 2 == 0 {
                ("user", "a question of some length")
            } else {
                ("assistant", "an answer")
            }
        })
        .collect();
    assert!(t.render_tracked(&msgs(&long)).is_ok());
}

#[test]
fn raise_exception_is_an_error() {
    let t = ChatTemplate::new(
        named_template_source(NamedTemplate::Gemma),
        "gemma",
        "<bos>",
        "<eos>",
    )
    .unwrap();
    let err = t
        .render(&msgs(&[("system", "x"), ("user", "y")]), false)
        .unwrap_err();
    assert!(
        format!("{err:#}").contains("System role not supported"),
        "{err:#}"
    );
}

#[test]
fn generation_blocks_render_their_body() {
    let src = "{% for m in messages %}{% if m.role == 'assistant' %}{%- generation -%} {{ m.content }}{% endgeneration %}{% else %}{{ m.content }}{% endif %}{% endfor %}";
    let t = ChatTemplate::new(src, "inline", "", "").unwrap();
    assert_eq!(
        t.render(&msgs(&[("user", "a"), ("assistant", "b")]), false)
            .unwrap(),
        "ab"
    );
}

#[test]
fn tojson_matches_python_json_dumps() {
    let t = ChatTemplate::new(
        "{{ {'b': 1, 'a': [1.5, 'x\"é', none, true]} | tojson }}|{{ {'k': {'z': 2}} | tojson(indent=2) }}",
        "inline",
        "",
        "",
    )
    .unwrap();
    assert_eq!(
        t.render(&[], false).unwrap(),
        "{\"b\": 1, \"a\": [1.5, \"x\\\"é\", null, true]}|{\n  \"k\": {\n    \"z\": 2\n  }\n}"
    );
}

#[test]
fn python_string_methods_work() {
    let t = ChatTemplate::new("{{ '  Ab  '.strip().lower() }}{{ 'a</think>b'.split('</think>')[-1] }}{{ 'xy'.startswith('x') }}", "inline", "", "").unwrap();
    assert_eq!(t.render(&[], false).unwrap(), "abbTrue");
}

#[test]
fn strftime_formats_dates() {
    // 2024-07-26 12:34:56 UTC, a Friday.
    assert_eq!(
        crate::jinja_fns::strftime(1_721_997_296, "%d %b %Y %A %H:%M:%S %j"),
        "26 Jul 2024 Friday 12:34:56 208"
    );
}
