//! Fake providers on loopback that speak each provider's real wire protocol.
