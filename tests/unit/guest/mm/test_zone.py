from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from guest.mm.zone import FreeList as FreeArea


def test_list_order_head_and_tail() -> None:
    fa = FreeArea(0)
    fa.add_tail(1)
    fa.add_tail(2)
    fa.add_head(3)
    fa.add_head(4)
    assert list(fa) == [4, 3, 1, 2]
    assert fa.pop_head() == 4
    assert fa.pop_head() == 3
    assert fa.pop_head() == 1  # flips the tail part
    fa.add_head(9)
    assert list(fa) == [9, 2]
    fa.remove(2)
    assert list(fa) == [9]
    assert fa.nr_free == 1


def test_rotate_to_front() -> None:
    fa = FreeArea(0)
    for i in range(5):
        fa.add_tail(i)
    fa.rotate_to_front(3)
    assert list(fa) == [3, 4, 0, 1, 2]


@given(
    st.lists(
        st.tuples(st.sampled_from(["head", "tail", "pop", "remove", "rotate"]), st.integers(0, 30)),
        max_size=200,
    )
)
def test_free_area_matches_a_list_model(ops: list[tuple[str, int]]) -> None:
    fa = FreeArea(0)
    model: list[int] = []
    for op, x in ops:
        if op == "head" and x not in model:
            fa.add_head(x)
            model.insert(0, x)
        elif op == "tail" and x not in model:
            fa.add_tail(x)
            model.append(x)
        elif op == "pop" and model:
            assert fa.pop_head() == model.pop(0)
        elif op == "remove" and x in model:
            fa.remove(x)
            model.remove(x)
        elif op == "rotate" and x in model:
            fa.rotate_to_front(x)
            i = model.index(x)
            model = model[i:] + model[:i]
        assert list(fa) == model
        assert len(fa) == len(model)
        assert fa.first() == (model[0] if model else None)
