"""Small helpers shared by the layers."""

import keras


def clone_initializer(initializer):
    """A new instance of `initializer`.

    An unseeded Keras initializer instance returns the same values on every call, so one
    instance shared by two layers would give both identical weights.
    """
    return keras.initializers.deserialize(keras.initializers.serialize(keras.initializers.get(initializer)))
