"""The pages each edge site serves: the shopper app and the staff capture page."""
