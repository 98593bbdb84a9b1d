"""Small framework-free helpers shared by every stage."""
