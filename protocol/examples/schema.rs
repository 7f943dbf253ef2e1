//! Prints the JSON Schema of one message (or lists them): `cargo run -p tolk-protocol --example schema -- utterance`.

fn main() {
    let all = tolk_protocol::schema::all();
    match std::env::args().nth(1) {
        Some(name) => match all.iter().find(|(n, _)| *n == name) {
            Some((_, schema)) => println!("{}", serde_json::to_string_pretty(schema).unwrap_or_default()),
            None => {
                eprintln!("no message {name:?}");
                std::process::exit(2);
            }
        },
        None => all.iter().for_each(|(n, _)| println!("{n}")),
    }
}
