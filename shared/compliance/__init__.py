"""The second product: the component-compliance classifier and its lexicon."""
