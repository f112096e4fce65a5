"""Planning a run from the dataset and the machine: pure parts (no Ray), tested on described machines."""
