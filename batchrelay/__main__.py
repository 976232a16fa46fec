from batchrelay.cli.main import main

main()
