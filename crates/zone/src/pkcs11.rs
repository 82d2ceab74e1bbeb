//! PKCS#11 zone backend (being written).
