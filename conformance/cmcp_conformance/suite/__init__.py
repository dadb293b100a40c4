"""The conformance tests. Each test is marked with the catalogue ID it checks."""
