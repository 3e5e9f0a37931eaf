"""Pumps and wards that speak the real wire protocols, for training and tests."""
