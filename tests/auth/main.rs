//! SMTP AUTH, as one test binary: the SMTP layer's AUTH PLAIN and LOGIN against `smtp.users`
//! (`smtp`), and hashed passwords with real clients, the failure delay and users restricted to
//! one mailbox on the whole relay (`front_door`).

mod smtp;
mod front_door;
