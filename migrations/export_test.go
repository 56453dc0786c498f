package migrations

// Files are the embedded migrations, for tests that replay what an
// earlier relay did with them.
var Files = files
