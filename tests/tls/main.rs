//! TLS, as one test binary: STARTTLS and implicit TLS in the SMTP layer (`smtp`), and the
//! certificate of a running relay — reload, a bad new pair, certs/README.md's recipe
//! (`front_door`).

mod smtp;
mod front_door;
