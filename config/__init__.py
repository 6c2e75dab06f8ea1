"""Settings and deployment specs; imports no other project package."""
