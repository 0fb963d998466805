// Pipeline walk tests.
