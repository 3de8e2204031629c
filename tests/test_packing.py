import pytest

from tfx_gpt2.text.packing import BlockPacker, pack_documents

EOT = 99


def test_blocks_overlap_by_one_and_every_token_is_a_target_once():
    docs = [[1, 2, 3], [4, 5], [6, 7, 8, 9]]
    blocks, tail = pack_documents(docs, block_len=4, eot_id=EOT)
    # stream: 1 2 3 99 4 5 99 6 7 8 9
    assert blocks == [[1, 2, 3, 99], [99, 4, 5, 99], [99, 6, 7, 8]]
    assert tail == [9]
    targets = [t for b in blocks for t in b[1:]] + tail
    assert targets == [2, 3, 99, 4, 5, 99, 6, 7, 8, 9]


def test_short_input_stays_in_tail():
    blocks, tail = pack_documents([[1, 2]], block_len=4, eot_id=EOT)
    assert blocks == [] and tail == [1, 2]


def test_packer_memory_is_bounded_by_a_block():
    packer = BlockPacker(block_len=5, eot_id=EOT)
    for _ in range(1000):
        list(packer.add_document(list(range(7))))
        assert len(packer._buffer) < 5 + 7 + 1


def test_block_len_must_hold_a_target():
    with pytest.raises(ValueError, match="block_len = 1"):
        BlockPacker(1, EOT)
