//! Prints the OpenAPI document; `cargo xtask openapi` writes it to docs/reference/openapi.json.

fn main() {
    print!("{}", kokino_http::openapi::document_text());
}
